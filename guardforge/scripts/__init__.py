"""Scripts and extensions: plugins found through the `guardforge.scripts` entry points (docs/scripts.md)."""

from guardforge.scripts.base import Generate, MadeImage, NoArgs, Script, ScriptRun
from guardforge.scripts.registry import ScriptPlan, ScriptRegistry

__all__ = ["Generate", "MadeImage", "NoArgs", "Script", "ScriptPlan", "ScriptRegistry", "ScriptRun"]
