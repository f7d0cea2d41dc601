"""The names of what a run writes into its output_dir, in one place (and so the list `--overwrite_output_dir`
removes: `RUN_OUTPUTS`). A recipe's own files (a tokenizer, a transformers export) are not named here: the run
directory lists what appeared in the folder while a run held it (`.run_outputs.json`), so they go too."""

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REPORT = "report"  # report.json and report.txt
TEST_REPORT = "test_report"  # with --do_predict on labelled inputs
SUMMARY_FILE = "summary.json"  # written last: it marks a finished run
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
PREDICTIONS_FILE = "predictions.csv"
CALIBRATION_FILE = "calibration.json"
THRESHOLDS_FILE = "thresholds.json"
ERRORS_FILE = "errors.csv"
BEST_DIR = "best"
CHECKPOINTS_DIR = "checkpoints"
PLOTS = ("loss.png", "confusion_matrix.png", "calibration.png")
OUTPUTS_MANIFEST = ".run_outputs.json"  # what else the run wrote (see RunDirectory.record_outputs)

RUN_OUTPUTS = (CHECKPOINTS_DIR, METRICS_FILE, CONFIG_FILE, f"{REPORT}.json", f"{REPORT}.txt", SUMMARY_FILE,
               WEIGHTS_FILE, *PLOTS, CALIBRATION_FILE, THRESHOLDS_FILE, ERRORS_FILE, BEST_DIR, LABELS_FILE,
               PREDICTIONS_FILE, f"{TEST_REPORT}.json", f"{TEST_REPORT}.txt", OUTPUTS_MANIFEST)
