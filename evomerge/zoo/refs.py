"""``zoo:<profile>/<path>``: a file of a built-in zoo named where any machine finds it.

A config that lists the zoo's experts by absolute path works only where that path exists; a tune
job's best config named the copy of the zoo inside Ray's temporary package folder, gone with the
job's session. ``zoo:small/experts/rev_digits`` is resolved when a config loads, to the folder
``ensure_zoo`` uses for that profile on this machine (the shipped zoo, else the cache).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

PREFIX = "zoo:"


def resolve_zoo_ref(value: Any) -> Any:
    """``value`` with a ``zoo:<profile>/<path>`` string made the path on this machine; anything
    else as it is. A bad reference raises ``ValueError`` naming it (the config layer adds the key)."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    from evomerge.zoo.model import PROFILES
    from evomerge.zoo.zoo import zoo_root_in_use

    profile, _, rest = value[len(PREFIX):].partition("/")
    if profile not in PROFILES:
        raise ValueError(f"unknown zoo profile {profile!r} in a `zoo:<profile>/<path>` reference "
                         f"(profiles: {', '.join(sorted(PROFILES))})")
    rel = PurePosixPath(rest)
    if not rest or rel.is_absolute() or ".." in rel.parts:
        raise ValueError("a `zoo:<profile>/<path>` reference needs a path inside the zoo after the profile, "
                         "without `..` (e.g. zoo:small/experts/rev_digits)")
    return zoo_root_in_use(profile) / Path(*rel.parts)


def zoo_ref(path: str | Path) -> str | None:
    """``zoo:<profile>/<path>`` for a path inside the zoo ``ensure_zoo`` uses for a profile here;
    None for any other path (the zoo's folder itself, a zoo in a folder of the user's own)."""
    from evomerge.zoo.model import PROFILES
    from evomerge.zoo.zoo import zoo_root_in_use

    target = Path(path).resolve()
    for profile in PROFILES:
        root = zoo_root_in_use(profile).resolve()
        if root in target.parents:
            return PREFIX + "/".join((profile, *target.relative_to(root).parts))
    return None


def with_zoo_refs(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped config (``model_dump(mode="json")``) whose ``experts.base``, expert paths and
    ``evaluation.task_files`` in a built-in zoo are written as ``zoo:`` references (a copy; other
    paths unchanged)."""
    data = dict(data)
    experts = data.get("experts")
    if isinstance(experts, dict):
        experts = dict(experts)
        if experts.get("base"):
            experts["base"] = zoo_ref(experts["base"]) or experts["base"]
        experts["experts"] = [{**e, "path": zoo_ref(e["path"]) or e["path"]} for e in experts.get("experts", [])]
        data["experts"] = experts
    evaluation = data.get("evaluation")
    if isinstance(evaluation, dict) and evaluation.get("task_files"):
        files = {task: zoo_ref(path) or path for task, path in evaluation["task_files"].items()}
        data["evaluation"] = {**evaluation, "task_files": files}
    return data
