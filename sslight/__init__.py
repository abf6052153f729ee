"""sslight: fast self-supervised pre-training of low-compute vision backbones."""

__version__ = "0.1.0"


def pretrain(config: str | None = None, overrides: dict | list | None = None, **flags) -> dict:
    """Pre-train from Python exactly as ``sslight train`` does (the same resolution, checks and
    loop): ``config`` is a config file (``--config``), ``flags`` the command's flags by name
    (``model="mnv2", epochs=1, out="runs/x"``), ``overrides`` dotted keys
    (``{"optim.lr": 0.3}`` or ``["optim.lr=0.3"]``), applied last. Returns the last epoch's
    record (``out``, ``loss``, ``steps``, ``knn_top1``, ...). Bad input raises the command's
    one-line error as :class:`sslight.config.ConfigError` (or ``loaders.datasets.DataError``)."""
    from sslight.cli import FLAGS
    from sslight.config import ConfigError, read_file
    from sslight.train.loop import prepare, train

    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ConfigError(f"pretrain({unknown[0]}=...): not a flag; allowed: config, overrides, {', '.join(FLAGS)}")
    items = [f"{FLAGS[name]}={value}" for name, value in flags.items()]
    if isinstance(overrides, dict):
        items += [f"{key}={value}" for key, value in overrides.items()]
    else:
        items += list(overrides or [])
    return train(prepare(items, read_file(config) if config else None, config or ""))
