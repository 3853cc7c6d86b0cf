"""The server's secret key: configured, or generated once and kept in a private file."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from app.config import ConfigError, SecuritySettings

log = logging.getLogger(__name__)


def load_or_create_secret_key(security: SecuritySettings) -> str:
    """Return `security.secret_key`, else the key in `secret_key_file`, creating it (mode 600)
    on first start so credentials stay readable across restarts."""
    if security.secret_key is not None and security.secret_key.get_secret_value():
        return security.secret_key.get_secret_value()
    path = Path(security.secret_key_file).expanduser()
    try:
        if path.is_file():
            key = path.read_text().strip()
            if not key:
                raise ConfigError(f"config error: security.secret_key_file: {path} is empty")
            if path.stat().st_mode & 0o077:
                log.warning("secret key file %s is readable by others; chmod 600 it", path)
            return key
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_urlsafe(48)
        # O_EXCL: if two processes race on first start, exactly one key wins.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"config error: security.secret_key_file: cannot use {path}: {exc.strerror}"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)
    log.info("generated a new secret key in %s", path)
    return key
