"""What a deployment of ``agegap serve`` may change, free of heavy imports for ``--help``."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_FILES = 16
DEFAULT_BATCH_WAIT_MS = 2.0
MB = 1_000_000


@dataclass(frozen=True)
class ServeSettings:
    """Limits, the default of flip TTA, and the window in which requests share a model call."""

    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * MB)
    max_files: int = DEFAULT_MAX_FILES
    tta_flip: bool = False  # for requests that do not say
    batch_wait_s: float = DEFAULT_BATCH_WAIT_MS / 1000

    @property
    def max_request_bytes(self) -> int:
        """A whole request: every file at its limit, plus room for the multipart headers."""
        return self.max_files * self.max_upload_bytes + MB
