"""Label and annotation keys of the objects the operator creates and reads.

One layer below `render/` (which sets them) and `decide/` (which reads them), so neither
imports the other.
"""

from __future__ import annotations

from cpt_operator.api.common import GROUP

MANAGED_BY = "cpt-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_RUN = f"{GROUP}/run"
# The CPTRun's metadata.uid on the pods the operator creates for it: with the namespace (from
# service discovery) the identity Prometheus gives a trainer's series (`run_uid`), so a
# recreated run of the same name never reads the old run's series.
LABEL_RUN_UID = f"{GROUP}/run-uid"
LABEL_CORPUS = f"{GROUP}/corpus"
LABEL_NAMESPACE = f"{GROUP}/namespace"

# Kueue's: the LocalQueue of a job (set by us or by Kueue's webhook), and the uid of the job
# a Workload belongs to (set by Kueue on the Workload).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"

ANNOTATION_SPEC_DIGEST = f"{GROUP}/immutable-spec-digest"
ANNOTATION_CONFIG_DIGEST = f"{GROUP}/config-digest"
# Recorded on a run's PyTorchJob when it is created (and mirrored in status.checkpointStorage):
# where the run's checkpoints are and whether they are deleted with it.
ANNOTATION_CHECKPOINT_URI = f"{GROUP}/checkpoint-uri"
ANNOTATION_DELETE_WITH_RUN = f"{GROUP}/delete-checkpoints-with-run"
