"""A network's settings: `NetworkConfig`, made by gin's `network`."""

import dataclasses

import gin

from ft_keras.models import bn_momentum


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """A network of `ft_keras.models.get` and its keyword arguments.

    Attributes:
        name: The network's name.
        kwargs: Its keyword arguments; `bn_momentum` (None: capped to suit
            the stage's steps, `ft_keras.models.bn_momentum`) applies to
            every network.
        inherited: The keys of `kwargs` bound for every network
            (`network.weight_decay`) rather than under this network's scope
            (`student/network.weight_decay`): what an error about them names.
    """

    name: str
    kwargs: dict
    inherited: tuple = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        if self.kwargs.get("bn_momentum") is not None:
            bn_momentum.check_bn_momentum(
                self.kwargs["bn_momentum"], "network.bn_momentum"
            )


@gin.configurable("network", module="ft_keras.config")
def network(name=gin.REQUIRED, **kwargs):
    """A network of `ft_keras.models.get` and its keyword arguments
    (`weight_decay`, `shortcut`, `dropout`, ...: declared by the network's
    own factory; `bn_momentum` for every network). Bind it under a scope:
    `teacher/network.name = 'resnet56'`. An argument bound for every network
    (`network.weight_decay`) that one of them does not take is refused;
    `student/network.weight_decay = None` clears it for that one."""
    return NetworkConfig(name=name, kwargs=dict(kwargs))
