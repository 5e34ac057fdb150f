"""An Input for a secret's value: drawn as bullets, and its messages never show the value.

Textual logs every message it dispatches (to the devtools console when one is attached), with
each message's repr; Input's own Changed and Submitted would put the value there. These say
only how long it is.
"""

from __future__ import annotations

from textual.widgets import Input


class _Hidden:
    """What a masked message shows for the value in a repr."""

    def __init__(self, value: str) -> None:
        self.length = len(value)

    def __repr__(self) -> str:
        return f"<hidden, {self.length} characters>"


class MaskedInput(Input):
    class Changed(Input.Changed):
        def __repr__(self) -> str:
            return f"MaskedInput.Changed(value={_Hidden(self.value)!r})"

        def __rich_repr__(self):  # type: ignore[no-untyped-def]
            yield "value", _Hidden(self.value)

    class Submitted(Input.Submitted):
        def __repr__(self) -> str:
            return f"MaskedInput.Submitted(value={_Hidden(self.value)!r})"

        def __rich_repr__(self):  # type: ignore[no-untyped-def]
            yield "value", _Hidden(self.value)

    class Blurred(Input.Blurred):
        def __repr__(self) -> str:
            return f"MaskedInput.Blurred(value={_Hidden(self.value)!r})"

        def __rich_repr__(self):  # type: ignore[no-untyped-def]
            yield "value", _Hidden(self.value)

    def __init__(self, *, placeholder: str = "", id: str | None = None) -> None:
        super().__init__(placeholder=placeholder, password=True, id=id)

    def forget(self) -> None:
        """Drop the value (once it is stored, or the dialog is cancelled)."""
        self.value = ""

    def action_copy(self) -> None:
        """A hidden value is never copied out (to the app's clipboard or the terminal's)."""

    def action_cut(self) -> None:
        """Nor cut out."""
