"""distillkit: knowledge distillation of LLMs with Hydra and Lightning.

Import path note: arcee's DistillKit also installs a package named ``distillkit``;
install one or the other in an environment, not both.
"""

__version__ = "0.1.0"
