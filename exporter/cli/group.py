"""The `kiln` group: the one place a KilnError or usage error becomes one line and an exit code, and
`kiln --help` listing commands by workflow."""

from __future__ import annotations

import sys
from typing import Any

import click

from exporter.cli.common import fail, progress
from runtime.errors import ColumnError, DataError, KilnError

# workflow -> commands, in the order a user meets them; `kiln --help` prints one section per workflow
SECTIONS = {
    "Make an artifact": ("export", "finetune", "prune", "quantize", "optimize", "build", "export-triton"),
    "Check it": ("inspect", "eval", "bench", "report", "doctor"),
    "Run it": ("predict", "serve", "loadtest"),
    "Release it": ("keygen", "sign", "verify"),
}


# the parameters that choose a data file's column, per role, across commands (predict --csv: --column)
COLUMN_OPTIONS = {"text": ("text_column", "column"), "label": ("label_column",)}


def column_hint(command: click.Command | None, e: ColumnError, group_path: str) -> str:
    """How to point the command that failed at the right column: its own option, or that it has none."""
    for p in command.params if command else ():
        if isinstance(p, click.Option) and p.name in COLUMN_OPTIONS.get(e.role, ()):
            return f"choose it with {max(p.opts, key=len)}"
    name = f"{group_path} {command.name}" if command else group_path
    return f"{name} has no option to choose it: rename the file's column to {e.column!r}"


class KilnGroup(click.Group):
    """Turns every KilnError and usage error into one line on stderr and an exit code: the one place."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:  # type: ignore[override]
        extra.pop("standalone_mode", None)
        progress.reset(quiet=False)  # in-process callers (tests) run many commands in one interpreter
        try:
            rv = super().main(args=args, prog_name=prog_name or "kiln", standalone_mode=False, **extra)
        except KilnError as e:
            fail(str(e), e.exit_code)
        except click.UsageError as e:
            misplaced = self.misplaced_option(e)
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            fail(misplaced or e.format_message() + where, 2)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            fail("interrupted", 130)
        progress.end_bar()
        sys.exit(rv if isinstance(rv, int) else 0)

    def misplaced_option(self, e: click.UsageError) -> str | None:
        """`kiln bench ART --quiet`: an option of the group itself given after a command (click only says the
        command has no such option)."""
        if not isinstance(e, click.NoSuchOption) or e.ctx is None or e.ctx.command is self:
            return None
        for p in self.params:
            if isinstance(p, click.Option) and e.option_name in p.opts and not p.hidden:
                return (f"{e.option_name} is an option of {self.name} itself, not of {e.ctx.command_path}: put it before "
                        f"the command ({self.name} {min(p.opts, key=len)} {e.ctx.info_name} ...)")
        return None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ColumnError as e:  # the data layer cannot know which option this command has for the column
            command = self.commands.get(ctx.invoked_subcommand or "")
            raise DataError(f"{e} ({column_hint(command, e, ctx.command_path)})") from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        ordered = [name for names in SECTIONS.values() for name in names if name in self.commands]
        return ordered + sorted(set(self.commands) - set(ordered))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        placed: set[str] = set()
        limit = formatter.width - 6 - max(len(n) for n in self.commands)
        for title, names in [*SECTIONS.items(), ("Other", tuple(sorted(self.commands)))]:
            rows = [(n, self.commands[n].get_short_help_str(limit=limit)) for n in names
                    if n in self.commands and n not in placed and not self.commands[n].hidden]
            placed.update(n for n, _ in rows)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
