"""Whether a job's model can be had from the Hugging Face Hub, found out in seconds.

Without this, a hub model on a machine with no hub access costs minutes of retries (every file
is retried five times) before a long traceback. A job checks first: a local folder or
``ume-r1-tiny`` needs nothing; a hub model needs either the hub (one short probe) or a copy in
the local cache, which is then used without contacting the hub.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ume_plugins.checkpoints import TINY_ALIAS, check_local_path, resolve_name

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 5.0
_HELP = "pass --model PATH to a local checkpoint folder, or --model ume-r1-tiny to try the pipeline offline"


class HubUnreachableError(ValueError):
    """The model is on the hub, the hub cannot be reached and no cached copy exists."""


def hub_kwargs_for(name: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Load options that make loading ``name`` work without waiting on an unreachable hub.

    Returns:
        ``{}`` when nothing is needed, ``{"local_files_only": True}`` when the hub is off or
        unreachable but the model is cached.

    Raises:
        ValueError: ``name`` is a path with no folder there.
        HubUnreachableError: The hub is off (``HF_HUB_OFFLINE``) or unreachable and the model is
            not cached; the message says what could not be reached and what to do instead.
    """
    check_local_path(name)
    if name.strip().lower() == TINY_ALIAS or Path(name).is_dir():
        return {}
    import huggingface_hub
    from huggingface_hub import constants

    resolved = resolve_name(name)
    repo_id, revision = (resolved.path, resolved.revision) if resolved else (name, None)
    pinned = f"{repo_id}@{revision[:7]}" if revision else repo_id
    cached = isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    if huggingface_hub.is_offline_mode():
        if cached:
            return {}
        raise HubUnreachableError(
            f"{name} ({pinned}) is not in the local Hugging Face cache and the hub is switched off "
            f"(HF_HUB_OFFLINE); {_HELP}"
        )
    problem = _probe(constants.ENDPOINT, timeout)
    if problem is None:
        return {}
    if cached:
        logger.warning("Cannot reach %s (%s): using the cached copy of %s", constants.ENDPOINT, problem, pinned)
        return {"local_files_only": True}
    raise HubUnreachableError(f"cannot reach {constants.ENDPOINT} ({problem}) to download {name} ({pinned}); {_HELP}")


def _probe(endpoint: str, timeout: float) -> str | None:
    """None when the endpoint answers at all (any HTTP status), else what went wrong."""
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as error:
        reason = error.reason
        return f"timed out after {timeout:g} s" if isinstance(reason, TimeoutError) else str(reason)
    except (TimeoutError, OSError) as error:
        return f"timed out after {timeout:g} s" if isinstance(error, TimeoutError) else str(error)
