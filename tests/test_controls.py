import numpy as np

from gan_core.metrics.controls import class_accuracy, control_scores, mapped_accuracy, normalized_mutual_info


def test_class_accuracy_and_control_scores_read_the_classifier():
    logits = np.eye(3)[[0, 1, 2, 2]]
    assert class_accuracy(np.array([0, 1, 2, 0]), logits.argmax(1)) == 0.75
    assert control_scores("class", np.array([0, 1, 2, 0]), logits, lambda p: p + "_4") == {"class_acc_4": 0.75}
    assert control_scores("", np.array([0]), logits[:1], str) == {}


def test_code_metrics_separate_control_from_collapse():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, 2000)
    permuted_classes = (codes + 2) % 5  # code determines class, under another naming
    assert mapped_accuracy(codes, permuted_classes) == 1.0
    assert abs(normalized_mutual_info(codes, permuted_classes) - 1.0) < 1e-9
    collapsed = np.zeros_like(codes)  # G makes one class whatever the code
    assert mapped_accuracy(codes, collapsed) == 1.0 and normalized_mutual_info(codes, collapsed) == 0.0
    independent = rng.integers(0, 5, 2000)
    assert normalized_mutual_info(codes, independent) < 0.01
