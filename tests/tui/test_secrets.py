"""The Secrets screen: names from the keyring (never values) beside what the folder's pipelines
ask for; set through a masked dialog, delete after a confirm; no usable keyring said plainly.

A file keyring in a temp dir (tests/conftest.py `file_keyring`) stands in for the desktop one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from textual import events
from textual.widgets import Input

from core.api import Workspace
from loom_tui.app import LoomApp
from loom_tui.screens.confirm import ConfirmScreen
from loom_tui.screens.secrets import SecretsScreen
from loom_tui.screens.set_secret import NameInput, SetSecretScreen
from loom_tui.widgets.masked_input import MaskedInput
from loom_tui.widgets.paged_table import PagedTable
from tests.tui.conftest import SIZE, copy_sample, settle, text_of, wait_for

VALUE = "sk-tui-7f3e9a21c4b8d605"


def needs_a_key(folder: Path) -> Path:
    """The sample pipeline, asking for ${OPENAI_API_KEY} (a `$${LITERAL}` is not a secret)."""
    path = copy_sample(folder)
    text = path.read_text().replace("  provider: replay\n", "  provider: replay\n"
                                    "  api_key: ${OPENAI_API_KEY}\n")
    path.write_text(text.replace("description: ", "description: costs $${DOLLARS} "))
    return path


async def open_secrets(app: LoomApp, pilot) -> SecretsScreen:
    await pilot.press("f6")
    await wait_for(pilot, lambda: isinstance(app.screen, SecretsScreen), what="secrets")
    screen: SecretsScreen = app.screen  # type: ignore[assignment]
    await wait_for(pilot, lambda: screen.listed is not None, what="the keyring read")
    return screen


def seen_everywhere(app: LoomApp) -> str:
    """What the app shows now, as the screenshot a user could take."""
    return app.export_screenshot()


async def test_a_set_secret_is_listed_and_its_value_shown_nowhere(tmp_path: Path,
                                                                 file_keyring: Path) -> None:
    needs_a_key(tmp_path)
    posted: list[str] = []
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE, message_hook=lambda m: posted.append(repr(m))) as pilot:
        screen = await open_secrets(app, pilot)
        table = screen.query_one(PagedTable)
        assert [(row.key, str(row.cells[1]), str(row.cells[2])) for row in table.rows] == [
            ("OPENAI_API_KEY", "✗ missing", "customer_sentiment")]
        assert "keyrings.alt.file.PlaintextKeyring" in text_of(screen.query_one("#s-keyring-text"))

        await pilot.press("enter")  # set the highlighted name's value
        await wait_for(pilot, lambda: isinstance(app.screen, SetSecretScreen), what="the dialog")
        dialog = app.screen
        assert dialog.query_one("#secret-name", Input).value == "OPENAI_API_KEY"
        assert dialog.focused is dialog.query_one(MaskedInput)
        await pilot.press(*VALUE)
        shown = seen_everywhere(app)
        assert VALUE not in shown and "•" * len(VALUE) in shown
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen and len(table.rows) == 1
                       and str(table.rows[0].cells[1]) == "keyring", what="stored and listed")
        await settle(pilot)

        assert keyring.get_password("loom", "OPENAI_API_KEY") == VALUE
        assert VALUE not in seen_everywhere(app)
        assert any("stored OPENAI_API_KEY" in n.message for n in app._notifications)
        assert not any(VALUE in n.message for n in app._notifications)
        # Not in any message Textual logs, nor any widget left holding it, nor a worker.
        assert posted and not any(VALUE in line for line in posted)
        assert not any(getattr(w, "value", None) == VALUE for w in app.screen.walk_children())
        assert not any(VALUE in (w.description or "") for w in app.workers)

        # A new one, through n: name, enter, value, ctrl+s.
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, SetSecretScreen), what="the dialog")
        await pilot.press(*"PG_PASSWORD", "enter", *"pa55:w/rd@", "ctrl+s")
        await wait_for(pilot, lambda: [row.key for row in table.rows] == [
            "OPENAI_API_KEY", "PG_PASSWORD"], what="two secrets")
        assert table.highlighted.key == "PG_PASSWORD"
        assert str(table.rows[1].cells[2]) == "no pipeline here"
        assert "2 secrets in the keyring" in str(screen.query_one("#s-list").border_subtitle)
    assert keyring.get_password("loom", "PG_PASSWORD") == "pa55:w/rd@"


async def test_delete_asks_first_then_the_name_is_gone(tmp_path: Path, file_keyring: Path) -> None:
    workspace = Workspace(tmp_path)
    workspace.set_secret("OLD_TOKEN", "t-1")
    workspace.set_secret("KEEP_ME", "t-2")
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_secrets(app, pilot)
        table = screen.query_one(PagedTable)
        assert [row.key for row in table.rows] == ["KEEP_ME", "OLD_TOKEN"]
        table.cursor = 1
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("escape")  # not now
        assert keyring.get_password("loom", "OLD_TOKEN") == "t-1"
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("enter")  # Cancel has the focus: nothing deleted
        assert keyring.get_password("loom", "OLD_TOKEN") == "t-1"
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.click("#confirm-yes")
        await wait_for(pilot, lambda: [row.key for row in table.rows] == ["KEEP_ME"],
                       what="deleted")
        assert any("deleted OLD_TOKEN" in n.message for n in app._notifications)
    assert keyring.get_password("loom", "OLD_TOKEN") is None
    assert Workspace(tmp_path).secret_names() == ["KEEP_ME"]


async def test_a_secret_from_the_environment_is_not_missing(tmp_path: Path, file_keyring: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    needs_a_key(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", VALUE)
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_secrets(app, pilot)
        row = screen.query_one(PagedTable).rows[0]
        assert (row.key, str(row.cells[1])) == ("OPENAI_API_KEY", "environment")
        await pilot.press("d")  # not the keyring's to delete
        assert any("comes from the environment" in n.message for n in app._notifications)
        assert VALUE not in app.export_screenshot()


async def test_keys_typed_ahead_of_the_value_field_never_show_in_the_name(
        tmp_path: Path, file_keyring: Path) -> None:
    """Enter then the value, typed faster than the focus moves: the keys already on their way
    to the name field are dropped, never shown, and the dialog asks for the value again."""
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_secrets(app, pilot)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, SetSecretScreen), what="the dialog")
        name = app.screen.query_one(NameInput)
        await pilot.press(*"API_TOKEN")
        # All in the name field's queue at once, as a burst of keys from the terminal is.
        for key in ["enter", *VALUE]:
            name.post_message(events.Key(key, key if len(key) == 1 else None))
        await settle(pilot)
        assert name.value == "API_TOKEN"
        assert app.screen.focused is app.screen.query_one(MaskedInput)
        assert app.screen.query_one(MaskedInput).value == ""
        assert "type the value again" in text_of(app.screen.query_one("#secret-error"))
        assert VALUE not in app.export_screenshot()


async def test_without_a_usable_keyring_the_screen_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyring.backends.fail import Keyring as Fail

    previous = keyring.get_keyring()
    keyring.set_keyring(Fail())
    try:
        app = LoomApp(tmp_path)
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_secrets(app, pilot)
            shown = text_of(screen.query_one("#s-keyring-text"))
            assert "No usable keyring (NoKeyringError" in shown
            assert "pip install keyrings.alt" in shown
            assert "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring" in shown
            assert "keyring is unusable" in screen.query_one(PagedTable).empty_text
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, SecretsScreen)  # no dialog to type a value into
            assert any("No usable keyring" in n.message for n in app._notifications)
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def null_keyring() -> Iterator[None]:
    """keyring.backends.null: takes every value and keeps none (the tests' default backend,
    set here because `keyring` picks its backend once per process)."""
    from keyring.backends.null import Keyring as Null

    previous = keyring.get_keyring()
    keyring.set_keyring(Null())
    try:
        yield
    finally:
        keyring.set_keyring(previous)


async def test_a_backend_that_keeps_nothing_is_not_called_stored(tmp_path: Path,
                                                                null_keyring: None) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_secrets(app, pilot)
        assert "keeps nothing" in text_of(screen.query_one("#s-keyring-text"))
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, SetSecretScreen), what="the dialog")
        await pilot.press(*"LOST", "enter", *VALUE, "enter")
        error = app.screen.query_one("#secret-error")
        await wait_for(pilot, lambda: error.display, what="the refusal")
        assert "secret LOST" in text_of(error) and "did not keep it" in text_of(error)
        assert isinstance(app.screen, SetSecretScreen)
        await pilot.press("escape")
        assert app.screen is screen
        assert not any(getattr(w, "value", None) == VALUE for w in app.screen.walk_children())


async def test_a_bad_name_is_refused_in_the_dialog(tmp_path: Path, file_keyring: Path) -> None:
    app = LoomApp(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_secrets(app, pilot)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, SetSecretScreen), what="the dialog")
        await pilot.press(*"has space", "enter", *"v", "ctrl+s")
        error = app.screen.query_one("#secret-error")
        await wait_for(pilot, lambda: error.display, what="the refusal")
        assert "is not a secret name" in text_of(error)
    assert Workspace(tmp_path).secret_names() == []
