"""Every S3 key and prefix fanout uses, in one place.

Results bucket::

    runs/<job_id>/job.json                          the checked job (and where its items are)
    runs/<job_id>/plan.json                         the plan summary
    runs/<job_id>/batches.json                      the batch manifest (the Distributed Map's ItemReader)
    runs/<job_id>/batches/<nnnnn>.json              batch n: its items' inputs and its tasks
    runs/<job_id>/records/b<nnnnn>/<writer>-<k>.jsonl   task records, one JSON line each
    runs/<job_id>/spent/b<nnnnn>/<writer>.json      calls a batch invocation made that left no record (throttled
                                                    past their budget, out of time): counted in usage.model_calls
    runs/<job_id>/pacing/<nnnnn>.json               batch n's learned pace, quota figures and spend (fanout_core.pacing)
    runs/<job_id>/failures/<n>.json                 the error of a batch that failed for good (written by the ASL)
    runs/<job_id>/map-results/                      the Distributed Map's ResultWriter output
    runs/<job_id>/second-pass/<stage>.json          a second-pass stage's batch manifest (its batch files are
                                                    batches/<stage x 1,000,000 + n>, fanout_core.second_pass)
    runs/<job_id>/map-results-<stage>/              the second pass's Distributed Map's ResultWriter output
    runs/<job_id>/inference/<nnn>/input.jsonl       tier batch: Bedrock batch inference job n's input
    runs/<job_id>/inference/<nnn>/tasks.json        ... the task each recordId stands for, and its batch
    runs/<job_id>/inference/<nnn>/output/           ... the job's output URI (Bedrock writes <job id>/ in it)
    runs/<job_id>/lease.json                        held by the one run of the job_id in progress
    results/<job_id>/result.json, results.jsonl, report.md, report.html

Input bucket::

    jobs/<...>.json     an upload here starts an execution (the EventBridge rule)
    items/<...>         items and documents uploaded by the CLI (never under jobs/)

The state machine builds two keys itself with ``States.Format`` (a batch's
failure and the lease it releases when Aggregate fails); their templates
are here too, and a test checks the ASL uses exactly these. The stack's
lifecycle prefixes and IAM resources come from the patterns below.
Ids never appear in a key except the job_id, whose characters
``safe_job_id`` limits.
"""

from __future__ import annotations

# -- results bucket -------------------------------------------------------------------------------------------
RUNS = "runs/"
RESULTS = "results/"

JOB_FILE = "job.json"
PLAN_FILE = "plan.json"
MANIFEST_FILE = "batches.json"
LEASE_FILE = "lease.json"
BATCHES_DIR = "batches/"
RECORDS_DIR = "records/"
FAILURES_DIR = "failures/"
SPENT_DIR = "spent/"
PACING_DIR = "pacing/"
MAP_RESULTS_DIR = "map-results"
SECOND_PASS_DIR = "second-pass/"
INFERENCE_DIR = "inference/"
INFERENCE_INPUT = "input.jsonl"
INFERENCE_TASKS = "tasks.json"
# tier batch with limits.max_cost_usd: the batch inference jobs' part of the budget, read with the batches' pace and
# spend (fanout_core.batch_inference)
INFERENCE_BUDGET = PACING_DIR + "inference.json"

RESULT_FILES = ("result.json", "results.jsonl", "report.md", "report.html")

# the keys the ASL builds: States.Format templates over ($.job_id, $.batch.index) and ($.plan.job_id)
FAILURE_FORMAT = RUNS + "{}/" + FAILURES_DIR + "{}.json"
LEASE_FORMAT = RUNS + "{}/" + LEASE_FILE

# IAM resource patterns (object keys) and lifecycle prefixes of the stack
RUNS_ANY = RUNS + "*"
RESULTS_ANY = RESULTS + "*"
FAILURES_ANY = RUNS + "*/" + FAILURES_DIR + "*"
LEASES_ANY = RUNS + "*/" + LEASE_FILE
INFERENCE_ANY = RUNS + "*/" + INFERENCE_DIR + "*"

# -- input bucket ---------------------------------------------------------------------------------------------
JOBS = "jobs/"
JOB_SUFFIX = ".json"
ITEMS = "items/"


def pacing_name(index: int) -> str:
    """Batch ``index``'s pace and spend, relative to the run's prefix."""
    return f"{PACING_DIR}{index:05d}.json"


def run_prefix(job_id: str) -> str:
    return f"{RUNS}{job_id}/"


def run_key(job_id: str, name: str) -> str:
    """A file of the run: ``name`` relative to ``runs/<job_id>/`` (JOB_FILE, PLAN_FILE, batch_name(n), ...)."""
    return run_prefix(job_id) + name


def batch_name(index: int) -> str:
    """Batch ``index``'s file, relative to the run prefix."""
    return f"{BATCHES_DIR}{index:05d}.json"


def batch_records_dir(index: int) -> str:
    """Where batch ``index`` writes its records, relative to the run prefix."""
    return f"{RECORDS_DIR}b{index:05d}/"


def inference_dir(index: int) -> str:
    """Bedrock batch inference job ``index``'s folder, relative to the run prefix."""
    return f"{INFERENCE_DIR}{index:03d}/"


def batch_spent_dir(index: int) -> str:
    """Where batch ``index`` notes the calls that left no record, relative to the run prefix."""
    return f"{SPENT_DIR}b{index:05d}/"


def failure_key(job_id: str, index: int) -> str:
    return FAILURE_FORMAT.format(job_id, index)


def failure_batch(key: str) -> int:
    """The batch index of a failure key (failures/<n>.json)."""
    return int(key.rsplit("/", 1)[-1].split(".")[0])


def lease_key(job_id: str) -> str:
    return LEASE_FORMAT.format(job_id)


def plan_key(job_id: str) -> str:
    return run_key(job_id, PLAN_FILE)


def manifest_key(job_id: str) -> str:
    return run_key(job_id, MANIFEST_FILE)


def records_prefix(job_id: str) -> str:
    return run_key(job_id, RECORDS_DIR)


def map_results_prefix(job_id: str) -> str:
    return run_key(job_id, MAP_RESULTS_DIR)


def second_pass_manifest(stage: str) -> str:
    """A second-pass stage's batch manifest, relative to the run prefix."""
    return f"{SECOND_PASS_DIR}{stage}.json"


def second_pass_keys(stage: str) -> str:
    """The request keys of every task a second-pass stage planned (asked or reused), relative to the run prefix."""
    return f"{SECOND_PASS_DIR}{stage}.keys.json"


def second_pass_map_results_prefix(job_id: str, stage: str) -> str:
    return run_key(job_id, f"{MAP_RESULTS_DIR}-{stage}")


def result_prefix(job_id: str) -> str:
    return f"{RESULTS}{job_id}/"


def result_key(job_id: str, name: str) -> str:
    return result_prefix(job_id) + name


def items_key(name: str) -> str:
    """An object of items (or a folder's documents) the CLI uploads to the input bucket."""
    return ITEMS + name
