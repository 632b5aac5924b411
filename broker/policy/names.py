"""Allow-lists for every name and path a policy hands to sudoers, the file system or Kerberos.

Each check returns None when the text is acceptable and otherwise a short
reason with the fix, which the loader places after the key and the value.
Everything is ASCII-only and matched in full, so quotes, newlines, NULs,
sudoers metacharacters and look-alike Unicode letters never get through.
"""

from __future__ import annotations

import re
import unicodedata

from broker.core.errors import RefusedError
from broker.core.identity import ACCOUNT_NAME, GROUP_NAME

# Zones, roles, command sets, service accounts: lower-case words joined by single
# dashes. Without '_' the mapping to a sudoers Cmnd_Alias (upper-case, '-' -> '_') is
# one-to-one, so two policy names can never render to the same alias.
POLICY_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
POLICY_NAME_MAX = 48
POSIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# A path component may contain dots but never start with one: no '.', '..' or hidden names.
_COMPONENT = r"[A-Za-z0-9_+@-][A-Za-z0-9._+@-]*"
ABSOLUTE_PATH = re.compile(rf"(?:/{_COMPONENT})+")
# Command arguments: no sudoers specials (, : = \ ! " # ( ) * ? [ ]) and no quotes.
_ARGUMENT = re.compile(r"[A-Za-z0-9_+@./-]+")
PRINCIPAL = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?(?:@[A-Z0-9][A-Z0-9.-]*)?"
)
COMMAND_MAX = 255
DESCRIPTION_MAX = 200

# Kerberos enctypes Active Directory can issue, by their MIT names.
STRONG_ENCTYPES = ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96")
WEAK_ENCTYPES = ("rc4-hmac", "des-cbc-md5", "des-cbc-crc")
ENCTYPE_ALIASES = {
    "aes256-cts": "aes256-cts-hmac-sha1-96",
    "aes128-cts": "aes128-cts-hmac-sha1-96",
    "arcfour-hmac": "rc4-hmac",
    "arcfour-hmac-md5": "rc4-hmac",
}
# Programs that turn a narrow command set into ALL: shells, interpreters, editors with
# shell escapes, privilege tools.
ESCAPE_HATCHES = frozenset(
    {
        *("sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "rbash", "mksh"),
        *("python", "perl", "ruby", "lua", "node", "nodejs", "php", "tclsh", "wish", "env"),
        *("xargs", "vi", "vim", "rvim", "view", "ex", "ed", "nvim", "nano", "emacs", "less"),
        *("more", "man", "find", "awk", "gawk", "mawk", "nawk", "sed", "chroot", "nsenter"),
        *("tee", "gdb", "strace", "script", "screen", "tmux", "timeout", "nice", "ionice"),
        *("setsid", "unshare", "runuser", "setpriv", "systemd-run", "docker", "podman"),
        *("crontab", "make"),
    }
)
# Programs that are safe only with fixed arguments: written without any, sudo lets the
# holder add any (dmidecode --dump-bin FILE, tar --to-command, systemctl edit, ...).
NEEDS_ARGUMENTS = frozenset(
    {
        *("systemctl", "journalctl", "dmidecode", "tar", "rsync", "git", "ssh", "scp", "mount"),
        *("dd", "cp", "mv", "chmod", "chown", "install", "ln", "ip", "ipmitool", "nvidia-smi"),
        *("modprobe", "sysctl", "kill", "pkill", "umount", "zfs", "lctl", "scontrol"),
    }
)
# sudo's own tools: sudo rewrites any path ending in /sudoedit into its built-in editor
# (edit any file as root); the others hand out a new privileged shell.
PRIVILEGE_TOOLS = frozenset({"sudo", "sudoedit", "su", "visudo", "pkexec", "doas", "sudoreplay"})
# Where a program run as root may live: system directories only, never a place a user
# can write (/tmp, /home, /var/tmp, /dev/shm ...).
SYSTEM_PREFIXES = (
    "/usr/bin/",
    "/usr/sbin/",
    "/bin/",
    "/sbin/",
    "/usr/local/bin/",
    "/usr/local/sbin/",
    "/usr/lib/",
    "/usr/libexec/",
    "/opt/",
)


def base_program(name: str) -> str:
    """`python3.11` -> `python`, `lua5.4` -> `lua`, `php8.2` -> `php`: versions do not hide it."""
    return re.sub(r"[0-9][0-9.]*$", "", name) or name


def policy_name(text: str) -> str | None:
    if len(text) > POLICY_NAME_MAX or not POLICY_NAME.fullmatch(text):
        return (
            f"bad name; use lower-case letters and digits joined by single dashes "
            f"(e.g. gpu-root), at most {POLICY_NAME_MAX} characters"
        )
    return None


def description(text: str) -> str | None:
    """Free text, but one line: no control or format characters (newlines, bidi overrides)."""
    if len(text) > DESCRIPTION_MAX:
        return f"description longer than {DESCRIPTION_MAX} characters"
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in text):
        return "description with control characters; write one plain line"
    return None


def posix_name(text: str) -> str | None:
    if not POSIX_NAME.fullmatch(text):
        return "bad Unix name; use [a-z_][a-z0-9_-]*, at most 32 characters"
    return None


def group_name(text: str) -> str | None:
    if not GROUP_NAME.fullmatch(text):
        return (
            "bad group name; AD group names here are letters, digits, space, '_', '.', '-', "
            "at most 64 characters, starting with a letter or digit"
        )
    return None


def account_name(text: str) -> str | None:
    if not ACCOUNT_NAME.fullmatch(text):
        return "bad account name; use the sAMAccountName in lower case ([a-z_][a-z0-9_.-]*)"
    return None


def absolute_path(text: str) -> str | None:
    if len(text) > 4096 or not ABSOLUTE_PATH.fullmatch(text):
        return (
            "bad path; give an absolute path of letters, digits and ._+@- with no '.', '..', "
            "empty or hidden components and no trailing '/'"
        )
    return None


def command(text: str) -> str | None:
    """An absolute program path, optionally followed by plain arguments separated by spaces."""
    if len(text) > COMMAND_MAX:
        return f"command longer than {COMMAND_MAX} characters"
    if text != text.strip(" ") or "  " in text:
        # "/usr/bin/systemctl " is the bare program to sudo: any arguments at all.
        return "bad command; no leading, trailing or doubled spaces (sudo would drop them)"
    program, _, rest = text.partition(" ")
    if not ABSOLUTE_PATH.fullmatch(program):
        return (
            "bad command; start with the program's absolute path (e.g. /usr/bin/nvidia-smi), "
            "no trailing '/', which sudo would read as every program in the directory"
        )
    if program.rsplit("/", 1)[-1] in PRIVILEGE_TOOLS:
        return (
            f"{program} is one of sudo's own privilege tools (any path ending in /sudoedit is "
            'sudo\'s editor); grant a role with commands = "ALL" if that much is meant'
        )
    if not program.startswith(SYSTEM_PREFIXES):
        return (
            f"{program} is outside the system directories ({', '.join(SYSTEM_PREFIXES)}); "
            "a program run as root must not live where a user can write"
        )
    if rest and not all(_ARGUMENT.fullmatch(part) for part in rest.split(" ")):
        return (
            "bad command arguments; separate them by single spaces and use only letters, "
            "digits and _+@./- (no wildcards, quotes or sudoers special characters)"
        )
    return None


def program_name(command_text: str) -> str:
    """The file name of a command's program: `/usr/bin/vim -R` -> `vim`."""
    return command_text.split(" ", 1)[0].rsplit("/", 1)[-1]


def principal(text: str) -> str | None:
    if len(text) > 255 or not PRINCIPAL.fullmatch(text):
        return "bad principal; write service/host.domain or service/host.domain@REALM"
    return None


def cmnd_alias(name: str) -> str:
    """The sudoers Cmnd_Alias for a command set: `node-diag` -> `BROKER_NODE_DIAG`."""
    return "BROKER_" + name.upper().replace("-", "_")


def require_unix_name(name: str, what: str) -> None:
    """Names reach sudoers and grant files: the POSIX portable allow-list, nothing else."""
    if not POSIX_NAME.fullmatch(name):
        raise RefusedError(
            f"the {what} name {name!r} is not a POSIX user name ([a-z_][a-z0-9_-]*, at most "
            "32 characters)",
            fix="rename the account in AD, or have another person act",
        )
