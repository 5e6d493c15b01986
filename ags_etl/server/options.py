"""ServerOptions: every switch of ``ags-etl serve`` in one immutable value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerOptions:
    """How the local FeatureServer behaves.

    ``pagination=False`` imitates a 10.0-era layer (no resultOffset/resultRecordCount/
    orderByFields; see query.py). ``fail_rate`` is the probability that a query
    request fails, drawn from ``random.Random(seed)``. ``token_user``/``token_password``
    turn token security on; ``token_ttl`` (seconds) caps every token's life.
    ``box_only`` imitates a layer that answers nothing but plain and envelope queries
    (see faults.py; it needs ``pagination=False``); ``count_answers_features`` makes such a
    layer answer ``returnCountOnly`` with a page of features instead of refusing it.
    ``query_timeout`` (seconds) bounds each query request's work. ``cors_origins``
    are the browser origins given ``Access-Control-Allow-Origin`` (``"*"``: any);
    empty, the default, sends no CORS headers.

    ``editable`` turns the edit operations on (see edits.py); the stores then live in
    ``store_dir`` (None: ``DIR/.ags_etl_serve``) and survive restarts.
    ``drop_edit_answers`` and ``edit_answer_delay`` are faults of edit requests
    (see faults.py): the first N committed edit requests get no answer (the
    connection is closed), and every committed one waits that many seconds
    between commit and answer.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_record_count: int = 1000
    pagination: bool = True
    latency_ms: int = 0
    fail_rate: float = 0.0
    seed: int | None = None
    token_user: str | None = None
    token_password: str | None = None
    token_ttl: int | None = None
    box_only: bool = False
    count_answers_features: bool = False
    query_timeout: float = 10.0
    cors_origins: tuple[str, ...] = ()
    editable: bool = False
    store_dir: str | None = None
    drop_edit_answers: int = 0
    edit_answer_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.max_record_count < 1:
            raise ValueError(f"max_record_count must be at least 1, got {self.max_record_count}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be 0 or more, got {self.latency_ms}")
        if (self.token_user is None) != (self.token_password is None):
            raise ValueError("token auth needs both a user and a password")
        if self.token_ttl is not None and self.token_ttl < 1:
            raise ValueError(f"token_ttl must be at least 1 second, got {self.token_ttl}")
        if not self.query_timeout > 0:
            raise ValueError(f"query_timeout must be more than 0 seconds, got {self.query_timeout}")
        if self.box_only and self.pagination:
            raise ValueError("box_only needs pagination=False (a box-only layer refuses pagination)")
        if self.count_answers_features and not self.box_only:
            raise ValueError("count_answers_features needs box_only")
        if self.drop_edit_answers < 0:
            raise ValueError(f"drop_edit_answers must be 0 or more, got {self.drop_edit_answers}")
        if self.edit_answer_delay < 0:
            raise ValueError(f"edit_answer_delay must be 0 or more seconds, got {self.edit_answer_delay}")
        if not self.editable and (self.store_dir is not None or self.drop_edit_answers or self.edit_answer_delay):
            raise ValueError("store_dir, drop_edit_answers and edit_answer_delay need editable")

    @property
    def edit_user(self) -> str:
        """Who the editor-tracking fields name: the token user, else ``ags-etl``."""
        return self.token_user if self.token_user is not None else "ags-etl"

    @property
    def token_auth(self) -> bool:
        return self.token_user is not None

    @property
    def current_version(self) -> float:
        """10.81 (10.8.1) normally; 10.0 for the pagination-less server."""
        return 10.81 if self.pagination else 10.0

    @property
    def full_version(self) -> str:
        return "10.8.1" if self.pagination else "10.0"
