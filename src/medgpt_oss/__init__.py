"""medgpt-oss: a biomedical vision-language model in the MedGPT-oss recipe."""

import sys as _sys


def _register_exports_with_transformers() -> None:
    """After ``import medgpt_oss``, transformers' Auto classes load our exports (no trust_remote_code).

    The registration itself lives in :mod:`medgpt_oss.models.hf`, whose import pulls in torch and
    transformers' modelling code (seconds). ``import medgpt_oss`` stays instant: the first call of
    ``AutoConfig.from_pretrained`` / ``AutoConfig.for_model`` -- every ``AutoModel*.from_pretrained``
    goes through the former -- imports it, and the Auto classes are then complete. ``AutoConfig``
    is patched when transformers defines it (or now, if it already has).
    """
    import importlib.abc

    target = "transformers.models.auto.configuration_auto"

    def patch(module) -> None:
        auto_config = module.AutoConfig
        originals = {name: auto_config.__dict__[name] for name in ("from_pretrained", "for_model")}

        def registering(name):
            def method(cls, *args, **kwargs):
                for original_name, original in originals.items():  # once is enough
                    setattr(auto_config, original_name, original)
                try:
                    import medgpt_oss.models.hf  # noqa: F401  registers the config and model classes
                except Exception as exc:  # never break transformers for models that are not ours
                    import warnings

                    warnings.warn(f"medgpt_oss could not register its export format with transformers: {exc!r}",
                                  stacklevel=2)
                return originals[name].__func__(cls, *args, **kwargs)

            method.__doc__ = originals[name].__func__.__doc__
            return classmethod(method)

        for name in originals:
            setattr(auto_config, name, registering(name))

    if target in _sys.modules:
        patch(_sys.modules[target])
        return

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target_module=None):
            if fullname != target:
                return None
            _sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us
            from importlib.util import find_spec

            spec = find_spec(fullname)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_then_patch(module) -> None:
                    exec_module(module)
                    patch(module)  # touches no other module, so it is safe mid-way through any import

                spec.loader.exec_module = exec_then_patch
            return spec

    _sys.meta_path.insert(0, PatchOnImport())


_register_exports_with_transformers()
