"""The environment variables retriever reads, read once at the edge and passed in.

`Settings.from_environ(os.environ)` runs where a process of ours starts: each command of the
CLI (cli.py), and the processes the product starts that must read their own machine's
environment (a Ray actor, a launched training process: tests/check_layout.py EDGES names them).
Everything below takes the values as parameters; no library module reads an environment
variable (check_layout fails if one does).

Five more variables are read by the options they stand for (click's envvar=, shown by --help),
in cli.py too: ENV_DB (--db), ENV_STORE_URL (--store), ENV_MODEL (--model), ENV_PRETRAINED
(--pretrained), ENV_BACKEND (--backend), named below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retriever.devices import gpu_visible
from retriever.errors import UsageError
from retriever.userdirs import user_dir

ENV_ON_DISK = "RETRIEVER_INDEX_ON_DISK"
# read by cli.py's options (envvar=) and passed in as those options' values
ENV_DB = "RETRIEVER_DB"  # --db: the index folder, instead of <first folder>/.retriever
ENV_STORE_URL = "RETRIEVER_STORE_URL"  # --store: any SQLAlchemy URL, not <index>/store.db
ENV_MODEL = "RETRIEVER_MODEL"  # --model
ENV_PRETRAINED = "RETRIEVER_PRETRAINED"  # --pretrained
ENV_BACKEND = "RETRIEVER_BACKEND"  # --backend
ON_DISK = ("auto", "yes", "no")  # whether readers search a saved IVF from disk (index.ondisk)
DATA_HOME = ".local/share"  # under the home folder: $XDG_DATA_HOME's default (the XDG spec)
CACHE_HOME = ".cache"  # under the home folder: $XDG_CACHE_HOME's default
# what a terminal says it is: (variable, Settings field); present.preview reads them
TERMINAL = (("TERM", "term"), ("TERM_PROGRAM", "term_program"),
            ("KITTY_WINDOW_ID", "kitty_window_id"), ("ITERM_SESSION_ID", "iterm_session_id"))


class BadVariable(UsageError):
    """An environment variable's value cannot be used: `$NAME 'value': what would do`."""

    def __init__(self, name: str, value: str, problem: str) -> None:
        super().__init__(f"${name} {value!r}: {problem}")


@dataclass(frozen=True)
class Settings:
    """One field per environment variable; the defaults are those of a variable left unset."""

    # RETRIEVER_INDEX_ON_DISK: readers search a saved IVF from disk, its lists memory-mapped
    # (index.ondisk): one of ON_DISK; auto = when its files are large for the memory available
    index_on_disk: str = "auto"
    # HOME: the user's folder, under which the XDG folders default (None: the password
    # database's, as os.path.expanduser does)
    home: str | None = None
    # XDG_DATA_HOME: where the registry of indexes lives (retriever.userdirs); "" = unset
    xdg_data_home: str = ""
    # XDG_CACHE_HOME: where ONNX exports of models live (retriever.userdirs); "" = unset
    xdg_cache_home: str = ""
    # XDG_RUNTIME_DIR: where a server's socket may live when the index folder's path is too
    # long for one (retriever.server.discovery); "" = unset
    xdg_runtime_dir: str = ""
    # CUDA_VISIBLE_DEVICES: "" hides every GPU from CUDA (retriever.devices); None = unset
    cuda_visible_devices: str | None = None
    # TERM, TERM_PROGRAM, KITTY_WINDOW_ID, ITERM_SESSION_ID: the terminal, for --preview's
    # inline pictures (present.preview); None = unset
    term: str | None = None
    term_program: str | None = None
    kitty_window_id: str | None = None
    iterm_session_id: str | None = None
    # RANK, WORLD_SIZE, LOCAL_RANK: torchrun's contract with each process it starts (and
    # `launch`'s): this process's place among the training processes (training.distributed)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> Settings:
        """The settings `env` gives; BadVariable (one line, naming the variable) for a value
        that cannot be used. A variable set to "" counts as unset, except CUDA_VISIBLE_DEVICES
        (which it sets to no GPU) and HOME."""
        on_disk = env.get(ENV_ON_DISK) or "auto"
        if on_disk not in ON_DISK:
            raise BadVariable(ENV_ON_DISK, on_disk, f"use one of {', '.join(ON_DISK)}")
        terminal = {field: env.get(name) for name, field in TERMINAL}
        return cls(
            index_on_disk=on_disk, home=env.get("HOME"),
            xdg_data_home=env.get("XDG_DATA_HOME", ""),
            xdg_cache_home=env.get("XDG_CACHE_HOME", ""),
            xdg_runtime_dir=env.get("XDG_RUNTIME_DIR", ""),
            cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"), **terminal,
            rank=_whole(env, "RANK", cls.rank),
            world_size=_whole(env, "WORLD_SIZE", cls.world_size),
            local_rank=_whole(env, "LOCAL_RANK", cls.local_rank))

    @property
    def data_dir(self) -> Path:
        """retriever's per-user data folder: $XDG_DATA_HOME/retriever."""
        return user_dir(self.xdg_data_home, self.home, DATA_HOME)

    @property
    def cache_dir(self) -> Path:
        """retriever's per-user cache folder: $XDG_CACHE_HOME/retriever."""
        return user_dir(self.xdg_cache_home, self.home, CACHE_HOME)

    @property
    def gpu(self) -> bool:
        """CUDA sees a GPU on this machine (retriever.devices)."""
        return gpu_visible(self.cuda_visible_devices)

    @property
    def terminal(self) -> dict[str, str]:
        """The terminal's variables that are set, by name (present.preview.terminal_protocol)."""
        return {name: value for name, field in TERMINAL
                if (value := getattr(self, field)) is not None}


def _whole(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise BadVariable(name, value, "not a whole number") from None

