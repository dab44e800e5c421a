"""The fixed sets of allowed values, shared by the specs (which validate options) and the code that implements them.

Only plain tuples here, no imports: every module may use them without an import circle. Registries (pruning
methods, merge modes) are not listed here; the specs look them up by name.
"""

DTYPES = ("auto", "float32", "bfloat16", "float16")  # every dtype option; 'auto' keeps the checkpoint's dtype
OUTSIDE_SCOPE_MODES = ("dense", "magnitude", "drop")
PARTITION_COMBINE_MODES = ("independent", "max")
STRATEGIES = ("default", "reference")
DPA_METHODS = (1, 2)
OBJECTIVES = ("kl", "tasks")
CONSENSUS = ("sum", "count")
SEMANTICS = ("mergekit", "peft")
DEFAULT_TOL = 0.05
LEARNED = "learned"  # the DPA search that learns factors by distillation (amplify.learned)
SEARCHES = (*STRATEGIES, LEARNED)
GRANULARITIES = ("global", "block", "partition", "tensor", "row")  # what one learned factor covers
FULL_VOCAB_LIMIT = 8192  # learned teachers keep every log-prob up to this vocabulary size, else the top-k
TEACHER_TOP_K = 128
DEFAULT_TEXT_FIELD = "text"  # the JSON field of a prompt in a .jsonl calibration file
BACKENDS = ("hf", "vllm")  # lm-eval backends of `dppa-peft eval`
EXPORT_FORMATS = ("sparse-delta", "supertuning")  # ours (a copy) and stock PEFT's
DEMO_SIZES = ("default", "tiny")  # the demo zoo's sizes (demo.zoo.SIZES): the README's demo and a quick check
