"""Loom's two themes: one palette, dark and light."""

from __future__ import annotations

from textual.theme import Theme

LOOM_DARK = Theme(
    name="loom-dark",
    primary="#9D8CFF",
    secondary="#5FD7C7",
    accent="#F2B45A",
    foreground="#E4E1EE",
    background="#15131C",
    surface="#1D1A27",
    panel="#2A2638",
    success="#7BD88F",
    warning="#F2C94C",
    error="#F27A7A",
    dark=True,
)

LOOM_LIGHT = Theme(
    name="loom-light",
    primary="#5B45D6",
    secondary="#0E7C70",
    accent="#B0650A",
    foreground="#221E2E",
    background="#F6F4FA",
    surface="#FFFFFF",
    panel="#E8E4F3",
    success="#1E7B3A",
    warning="#8A6100",
    error="#B42323",
    dark=False,
)

THEMES = (LOOM_DARK, LOOM_LIGHT)
PAIR = {LOOM_DARK.name: LOOM_LIGHT.name, LOOM_LIGHT.name: LOOM_DARK.name}
