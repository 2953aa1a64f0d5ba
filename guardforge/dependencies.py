"""Whether the installed libraries work together for a feature, checked before use: a conflict is one line naming
the packages, not a traceback from deep inside transformers."""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

from guardforge.errors import IncompatibleDependencies

# What makes the installed set work again, in the words of the README's set-up.
REMEDY = 'reinstall the tested set: pip install -c constraints.txt -e "."'


def installed(package: str) -> Version | None:
    try:
        return Version(metadata.version(package))
    except metadata.PackageNotFoundError:
        return None


def lora_conflicts(transformers_needs_peft: str | None = None, diffusers_needs_peft: str | None = None,
                   diffusers_needs_transformers: str | None = None,
                   versions: dict[str, Version | None] | None = None) -> list[str]:
    """Why LoRA (inference and DreamBooth) cannot run with these versions; empty when it can.

    Each minimum defaults to the one the installed library itself enforces (transformers raises ValueError from
    its adapter methods below its MIN_PEFT_VERSION; diffusers turns its PEFT backend off below its minimums
    and then refuses every LoRA). The arguments exist so a caller can ask about another combination.
    """
    if versions is None:
        versions = {name: installed(name) for name in ("peft", "transformers", "diffusers")}
    if transformers_needs_peft is None and versions.get("transformers") is not None:
        from transformers.integrations import peft as transformers_peft

        transformers_needs_peft = getattr(transformers_peft, "MIN_PEFT_VERSION", None)
    if versions.get("diffusers") is not None and (diffusers_needs_peft is None or diffusers_needs_transformers is None):
        from diffusers.utils import constants

        diffusers_needs_peft = diffusers_needs_peft or constants.MIN_PEFT_VERSION
        diffusers_needs_transformers = diffusers_needs_transformers or constants.MIN_TRANSFORMERS_VERSION

    peft, transformers, diffusers = versions.get("peft"), versions.get("transformers"), versions.get("diffusers")
    problems = []
    if peft is None:
        problems.append("peft is not installed")
    else:
        if transformers is not None and transformers_needs_peft and peft < Version(transformers_needs_peft):
            problems.append(f"transformers {transformers} needs peft >= {transformers_needs_peft}, "
                            f"but peft {peft} is installed")
        if diffusers is not None and diffusers_needs_peft and peft < Version(diffusers_needs_peft):
            problems.append(f"diffusers {diffusers} needs peft >= {diffusers_needs_peft}, "
                            f"but peft {peft} is installed")
    if (transformers is not None and diffusers is not None and diffusers_needs_transformers
            and transformers < Version(diffusers_needs_transformers)):
        problems.append(f"diffusers {diffusers} needs transformers >= {diffusers_needs_transformers} for LoRA, "
                        f"but transformers {transformers} is installed")
    return problems


def require_lora_support() -> None:
    """Raise IncompatibleDependencies with one line when the installed set cannot apply or train LoRA."""
    problems = lora_conflicts()
    if problems:
        raise IncompatibleDependencies(f"LoRA cannot run here: {'; '.join(problems)}; {REMEDY}")
