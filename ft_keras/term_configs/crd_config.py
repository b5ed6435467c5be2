"""The config of CRD, which the training split completes: its size, its
classes and each example's label."""

import dataclasses

from ft_keras.term_configs.registration import TermConfig


@dataclasses.dataclass(frozen=True)
class CRDConfig(TermConfig):
    """CRD in the runner: the training split fills `num_examples` and
    `num_classes` where gin leaves them unbound (a bound value must match
    it), and the term gets each example's class (`CRD.set_labels`); the
    training pipeline yields each example's index (`needs_indices`).

    ```python
    from ft_keras import term_configs
    crd = term_configs.crd().for_data(term_configs.TrainingSet(
        num_examples=6, num_classes=3, labels=[0, 0, 1, 1, 2, 2]))
    dict(crd.arguments)["num_examples"]  # 6
    ```
    """

    data_arguments = ("num_examples", "num_classes")
    labels: object = dataclasses.field(default=None, repr=False, compare=False)

    def for_data(self, training_set):
        """This config with the split's size, classes and labels."""
        arguments = dict(self.arguments)
        for name in self.data_arguments:
            value, bound = getattr(training_set, name), arguments.get(name)
            if bound is None:
                arguments[name] = value
            elif bound != value:
                raise ValueError(
                    f"`{self.gin_name}.{name} = {bound!r}`, but the training "
                    f"split has {value}: leave `{self.gin_name}.{name}` "
                    "unbound (the split's) or bind the split's value.")
        return dataclasses.replace(self, arguments=tuple(arguments.items()),
                                   labels=training_set.labels)

    def build(self, teacher, student, pretrained=None):
        """A new `CRD`, given the training split's labels (`for_data`)
        for its negatives of other classes."""
        if dict(self.arguments).get("num_examples") is None:
            raise ValueError(
                f"{self.reference} needs the training split's size: the "
                "runner gives it (`for_data`); in Python, bind "
                f"`{self.gin_name}.num_examples`.")
        term = super().build(teacher, student)
        if self.labels is not None and term.negatives == "other_classes":
            term.set_labels(self.labels)
        return term
