"""Training beyond one device: strategies, clusters, chief and workers.

`make_strategy` turns the settings of `experiment.strategy` and `cluster.*`
(see `ft_keras.config`) into one `tf.distribute` strategy per process:

- `"auto"`: `MultiWorkerMirroredStrategy` when a cluster is configured
  (`TF_CONFIG`, or an `srun` step of several SLURM tasks),
  `MirroredStrategy` over the local GPUs if there are any, else the default
  strategy.
- `"multi_worker"`: `MultiWorkerMirroredStrategy`, over the cluster of
  `cluster.resolver` (`"tf_config"`, `"slurm"` or `"auto"`) or, without one,
  over the local devices of this single worker.
- `"mirrored"`, `"default"`: one machine.

In a cluster every worker runs the same command. Each step's global batch
(`dataset.batch_size` x all replicas) is split across the workers by
`tf.data` auto-sharding; gradients are all-reduced, so every worker holds the
same weights. The chief (task `chief`, or `worker` 0 when there is none)
writes the workdir; the others write what Keras makes every worker write
(checkpoints, saved models: saving reads distributed variables) into a
temporary `worker_dir` that is removed afterwards. The workdir must be on a
filesystem every worker can read (NFS, Lustre, a Kubernetes
ReadWriteMany volume): workers resume from the chief's checkpoints and read
its artifacts between stages, after a `barrier`.

Example:

```python
strategy = make_strategy("auto")   # TF_CONFIG set by the launcher
with scope(strategy):
    model = build_model()
    model.compile(...)
model.fit(dataset.with_options(shard_options("data")), epochs=10)
if is_chief(strategy):
    model.save("model.keras")
else:
    model.save(os.path.join(worker_dir("/runs/a", strategy), "model.keras"))
```

The package's modules: `cluster` (which cluster, its resolver),
`strategy` (`make_strategy`), `replica_mean` (`scope` and the replicas'
BatchNormalization statistics), `workers` (chief and workers, the
collectives that keep them together, the data's sharding). Each
replica's own copy of those statistics, which checkpoints keep, is in
`ft_keras.checkpoint.replica_copies`.
"""

from ft_keras.distribute.cluster import RESOLVERS
from ft_keras.distribute.cluster import detect_cluster
from ft_keras.distribute.cluster import make_resolver
from ft_keras.distribute.replica_mean import replica_mean_variables
from ft_keras.distribute.replica_mean import scope
from ft_keras.distribute.replica_mean import sync_replica_means
from ft_keras.distribute.strategy import COMMUNICATIONS
from ft_keras.distribute.strategy import STRATEGIES
from ft_keras.distribute.strategy import make_strategy
from ft_keras.distribute.workers import AUTO_SHARD_POLICIES
from ft_keras.distribute.workers import TaskInfo
from ft_keras.distribute.workers import any_worker
from ft_keras.distribute.workers import barrier
from ft_keras.distribute.workers import is_chief
from ft_keras.distribute.workers import num_workers
from ft_keras.distribute.workers import remove_worker_dir
from ft_keras.distribute.workers import shard_options
from ft_keras.distribute.workers import task_info
from ft_keras.distribute.workers import weights_fingerprint
from ft_keras.distribute.workers import worker_dir
from ft_keras.distribute.workers import worker_temp_dir
