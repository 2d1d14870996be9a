"""Command vocabulary (CONTRACT §3 ``cmd/{name}``): the names an agent answers."""

from typing import Final, Literal, get_args

#: every command a controller may send and an agent knows
CommandName = Literal[
    "rebirth",
    "resend",
    "restart_agent",
    "restart_device",
    "self_test",
    "print_test",
    "out_of_service",
    "in_service",
    "collect_logs",
    "install",
]
COMMAND_NAMES: Final[tuple[CommandName, ...]] = get_args(CommandName)

#: a reply's ``status`` (CONTRACT §3 ``reply``)
ReplyStatus = Literal["ok", "error", "expired", "rejected"]
