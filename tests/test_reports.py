"""The run reports (reports/): unit tests on hand-made TFDV statistics and TFMA outputs (natural slice order,
thresholds drawn, anomalies highlighted, hostile names escaped, nothing external), and an e2e test that opens the
reports small_pipeline wrote in Debian's chromium with every network request refused."""
import math
import os
import re

import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2

from pipeline import evaluation
from pipeline.config import EvaluatorConfig
from pipeline.gate import Anomaly
from reports import charts, html, results
from reports.statistics import Dataset

HOSTILE = "<script>alert('x')</script>$\\frac{1}{0}$ & \"q\" -->"
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|@import|url\(\s*["']?\s*(?:https?:)?//""",
                      re.IGNORECASE)


def _metrics(column=None, value=None, auc=None, accuracy=0.8, count=10.0, confusion=None):
    per_slice = metrics_for_slice_pb2.MetricsForSlice()
    if column:
        key = per_slice.slice_key.single_slice_keys.add(column=column)
        if isinstance(value, int):
            key.int64_value = value
        else:
            key.bytes_value = value.encode()
    for name, number in (("example_count", count), ("auc", auc), ("binary_accuracy", accuracy)):
        if number is not None:
            entry = per_slice.metric_keys_and_values.add()
            entry.key.name = name
            entry.value.double_value.value = number
    if confusion:
        entry = per_slice.metric_keys_and_values.add()
        entry.key.name = evaluation.CONFUSION_MATRIX_METRIC
        entry.value.confusion_matrix_at_thresholds.matrices.add(threshold=evaluation.DECISION_THRESHOLD, **confusion)
    return per_slice


def _plots():
    per_slice = metrics_for_slice_pb2.PlotsForSlice()
    value = per_slice.plot_keys_and_values.add().value
    for threshold, fpr, recall, precision in ((-1e-6, 1.0, 1.0, 0.4), (0.25, 0.5, 0.95, 0.6), (0.5, 0.2, 0.8, 0.75),
                                              (0.75, 0.05, 0.5, 0.9), (1.0, 0.0, 0.0, 1.0)):
        value.confusion_matrix_at_thresholds.matrices.add(
            threshold=threshold, false_positive_rate=fpr, recall=recall, precision=precision,
            true_positives=recall * 40, false_positives=fpr * 60)
    for low, n, predicted, positives in ((-math.inf, 0, 0, 0), (0.0, 50, 2.5, 3), (0.42, 20, 8.6, 9), (0.91, 30, 28.2, 27)):
        bucket = value.calibration_histogram_buckets.buckets.add(lower_threshold_inclusive=low)
        bucket.num_weighted_examples.value = n
        bucket.total_weighted_refined_prediction.value = predicted
        bucket.total_weighted_label.value = positives
    return [per_slice]


@pytest.fixture(scope="module")
def evaluation_result():
    metrics = [_metrics("trip_start_hour", 10, 0.91), _metrics("payment_type", HOSTILE, 0.75),
               _metrics(auc=0.8765, count=100.0, confusion={"true_positives": 32, "false_positives": 12,
                                                            "true_negatives": 48, "false_negatives": 8}),
               _metrics("trip_start_hour", 2, 0.65), _metrics("trip_start_hour", -1, 0.7),
               _metrics("payment_type", "Cash", float("nan"))]
    config = evaluation.eval_config(EvaluatorConfig(0.7, 0.01, ["trip_start_hour", "payment_type"]))
    return results.evaluation_from("/tmp/eval", metrics, _plots(), config)


@pytest.fixture(scope="module")
def evaluation_page(evaluation_result):
    report = evaluation.BlessingReport({"auc": 0.8765}, {}, [evaluation.Check(f"AUC 0.8765 >= 0.7 {HOSTILE}", True)],
                                       [f"auc on payment_type = {HOSTILE}"])
    return html.evaluation_page("chicago-taxi", evaluation_result, True, report)


def _feature(name, numeric=True, missing=0, present=100, empty=0):
    """A feature's TFDV statistics: `missing` examples without it, `present` with it, `empty` of those with no value."""
    feature = statistics_pb2.FeatureNameStatistics()
    feature.path.step.append(name)
    common = feature.num_stats.common_stats if numeric else feature.string_stats.common_stats
    common.num_non_missing, common.num_missing = present, missing
    common.tot_num_values, common.max_num_values = present - empty, 1
    if numeric:
        feature.num_stats.mean = 5.0
        histogram = feature.num_stats.histograms.add(type=statistics_pb2.Histogram.STANDARD)
        for low, count in ((0, 30), (5, 50), (10, 20)):
            histogram.buckets.add(low_value=low, high_value=low + 5, sample_count=count)
    else:
        feature.string_stats.unique = 2
        for label, count in (("Cash", 60), (HOSTILE, 40)):
            feature.string_stats.rank_histogram.buckets.add(label=label, sample_count=count)
            feature.string_stats.top_values.add(value=label, frequency=count)
    return feature


def _dataset(label, *features):
    statistics = statistics_pb2.DatasetFeatureStatistics(num_examples=100)
    statistics.features.extend(features)
    return Dataset(label, f"/stats/{label}", statistics)


@pytest.fixture(scope="module")
def statistics_page():
    datasets = [_dataset("training", _feature("fare"), _feature(HOSTILE, numeric=False)),
                _dataset("evaluation", _feature("fare", missing=15, present=85, empty=10),
                         _feature(HOSTILE, numeric=False))]
    anomalies = [Anomaly("eval", "fare", "FEATURE_TYPE_LOW_FRACTION_PRESENT", f"Fraction 0.75 < 0.9 {HOSTILE}"),
                 Anomaly("eval", "(dataset)", "DATASET_LOW_NUM_EXAMPLES", "Low num examples in dataset.")]
    return html.statistics_page("chicago-taxi", datasets, anomalies)


def _svg_texts(svg: str) -> list[str]:
    """The labels matplotlib drew as paths, from the comments it leaves beside each."""
    return re.findall(r"<!-- (.*?) -->", svg)


def test_slices_in_natural_order(evaluation_result, evaluation_page):
    assert [s.name for s in evaluation_result.slices] == [
        "all examples", f"payment_type = {HOSTILE}", "payment_type = Cash", "trip_start_hour = -1",
        "trip_start_hour = 2", "trip_start_hour = 10"]
    table = evaluation_page[evaluation_page.index('id="slices"'):]
    assert table.index("trip_start_hour = -1") < table.index("trip_start_hour = 2") < table.index("trip_start_hour = 10")
    bars = evaluation_page[evaluation_page.index('data-chart="slices trip_start_hour"'):]
    labels = [t for t in _svg_texts(bars[:bars.index("</figure>")]) if "(n=" in t]
    assert labels == ["all examples  (n=100)", "-1  (n=10)", "2  (n=10)", "10  (n=10)"]


def test_natural_key_orders_numbers_in_text():
    names = ["hour 10", "hour 2", "hour -3", "b", "a 1.5", "a 1.25"]
    assert sorted(names, key=results.natural_key) == ["a 1.25", "a 1.5", "b", "hour -3", "hour 2", "hour 10"]


def test_thresholds_are_drawn_and_listed(evaluation_page):
    bars = evaluation_page[evaluation_page.index('data-chart="slices trip_start_hour"'):]
    assert "auc lower bound 0.7" in _svg_texts(bars[:bars.index("</figure>")])
    roc = evaluation_page[evaluation_page.index('data-chart="ROC"'):]
    assert {"model (AUC 0.8765)", "threshold 0.5"} <= set(_svg_texts(roc[:roc.index("</figure>")]))
    calibration = evaluation_page[evaluation_page.index('data-chart="calibration"'):]
    assert "threshold 0.5" in _svg_texts(calibration[:calibration.index("</figure>")])
    listed = re.findall(r"<li>(.*?)</li>", evaluation_page[evaluation_page.index('id="thresholds"'):])
    assert listed[:2] == ["auc &gt;= 0.7 (value threshold)", "auc change against the baseline &gt;= -0.01 (change threshold)"]


def test_change_threshold_is_drawn_at_the_value_it_allows(evaluation_result):
    with_baseline = evaluation_result._replace(slices=[evaluation_result.overall._replace(
        baseline_metrics={"auc": 0.9})] + evaluation_result.slices[1:])
    lines = html.threshold_lines(with_baseline)["auc"]
    assert lines[0] == charts.Threshold("auc lower bound 0.7", 0.7)
    assert lines[1].label == "baseline 0.9000 -0.01" and lines[1].value == pytest.approx(0.89)


def test_overall_numbers_and_confusion_matrix_are_tfmas(evaluation_page):
    assert '<td data-metric="auc">0.8765</td>' in evaluation_page
    assert '<td data-metric="example_count">100</td>' in evaluation_page
    matrix = evaluation_page[evaluation_page.index('data-chart="confusion matrix"'):]
    texts = _svg_texts(matrix[:matrix.index("</figure>")])
    assert texts.count("48.0%") == texts.count("12.0%") == texts.count("8.0%") == texts.count("32.0%") == 1
    assert {"48", "12", "8", "32", "Confusion matrix at threshold 0.5"} <= set(texts)


def test_decision_and_reasons_are_at_the_top(evaluation_page):
    decision = evaluation_page.index('id="decision"')
    assert decision < evaluation_page.index('id="reasons"') < evaluation_page.index("<h2>")
    assert ">BLESSED<" in evaluation_page


def test_calibration_bins_sum_tfmas_buckets():
    bins = charts.calibration_bins(_plots()[0].plot_keys_and_values[0].value.calibration_histogram_buckets.buckets)
    assert len(bins) == 10 and sum(b.examples for b in bins) == 100
    assert bins[0].examples == 50 and bins[0].mean_prediction == pytest.approx(0.05)
    assert bins[4].positive_rate == pytest.approx(0.45) and bins[9].examples == 30
    assert math.isnan(bins[5].mean_prediction)


def test_anomalies_are_highlighted(statistics_page):
    section = re.search(r'<section class="feature has-anomaly" id="feature-fare" data-feature="fare">.*?</section>',
                        statistics_page, re.DOTALL)
    assert section and "FEATURE_TYPE_LOW_FRACTION_PRESENT" in section.group(0)
    # evaluation: 15 examples without fare, 10 with an empty one (an empty CSV cell): 25 of 100
    assert "<tr><td>evaluation</td><td>75</td><td>25</td><td>25.00%</td>" in section.group(0)
    assert statistics_page.count('class="feature has-anomaly"') == 1
    assert '<tr class="anomaly"><td>eval</td><td class="text"><a href="#feature-fare">fare</a>' in statistics_page
    assert '<td class="text">(dataset)</td><td class="text">DATASET_LOW_NUM_EXAMPLES</td>' in statistics_page
    assert "2 anomalies: what ExampleValidator found" in statistics_page


def test_hostile_names_are_escaped(statistics_page, evaluation_page):
    for page in (statistics_page, evaluation_page):
        assert "<script" not in page
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # the text, escaped
        # In the charts' comments too: no "-->" ends one early.
        for comment in _svg_texts(page):
            assert "<" not in comment and "--" not in comment


def test_pages_fetch_nothing(statistics_page, evaluation_page):
    for page in (statistics_page, evaluation_page):
        assert page.startswith("<!doctype html>")
        assert not EXTERNAL.search(page), EXTERNAL.search(page)
        assert "<script" not in page and "<link" not in page and "<img" not in page


def test_serving_and_previous_span_statistics_join_the_page(tmp_path):
    stats_dir, monitoring = tmp_path / "statistics", tmp_path / "monitoring"
    for split, fare in (("train", _feature("fare")), ("eval", _feature("fare", missing=5, present=95))):
        (stats_dir / f"Split-{split}").mkdir(parents=True)
        (stats_dir / f"Split-{split}" / "FeatureStats.pb").write_bytes(statistics_pb2.DatasetFeatureStatisticsList(
            datasets=[_dataset(split, fare).statistics]).SerializeToString())
    monitoring.mkdir()
    for window, present in (("window-2026-09-21T1400Z", 1), ("window-2026-09-21T1500Z", 7)):
        (monitoring / f"{window}.json").write_text("{}")
        (monitoring / f"{window}.pb").write_bytes(statistics_pb2.DatasetFeatureStatisticsList(
            datasets=[_dataset("s", _feature("fare", present=present)).statistics]).SerializeToString())
    # Each run writes to its own folder and copies the page to the pipeline's (out/): the newest run's.
    path = html.write_statistics(str(stats_dir), str(tmp_path / "run-1"), "p", [], str(monitoring),
                                 copy_to=str(tmp_path / "out"))
    assert path == str(tmp_path / "run-1" / "statistics.html")
    first = open(path).read()
    assert re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>\d+</td>", first) == [
        ("training", "100"), ("evaluation", "95"), ("serving", "7")]
    assert "window-2026-09-21T1500Z.pb" in first and "No anomalies against the schema." in first
    assert (tmp_path / "out" / "statistics.html").read_text() == first
    assert os.path.samefile(path, tmp_path / "out" / "statistics.html")  # one file, two names: no second copy
    # After drift, the previous span's training statistics (what the gate compared with) join them.
    page = open(html.write_statistics(str(stats_dir), str(tmp_path / "run-2"), "p", [], None, str(stats_dir),
                                      copy_to=str(tmp_path / "out"))).read()
    assert re.findall(r"<tr><td>([\w ]+)</td><td>(\d+)</td><td>\d+</td>", page) == [
        ("training", "100"), ("evaluation", "95"), ("previous span", "100")]
    assert (tmp_path / "out" / "statistics.html").read_text() == page
    assert (tmp_path / "run-1" / "statistics.html").read_text() == first  # the older run keeps its own
    assert sorted(os.listdir(tmp_path / "out")) == ["statistics.html"]    # no temporary file left
    assert html.write_statistics(str(tmp_path / "none"), str(tmp_path / "out")) is None


def test_the_pipelines_copy_is_a_whole_file_where_hard_links_are_refused(tmp_path, monkeypatch):
    """link_atomic on a file system without hard links (EXDEV, EPERM): a copy, renamed into place as write_atomic
    does, with the same text and no temporary left."""
    import errno

    from pipeline import files

    source = files.write_atomic(tmp_path / "run-1" / "evaluation.html", "<p>run 1</p>")

    def refuse(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(files.os, "link", refuse)
    copy = files.link_atomic(source, tmp_path / "out" / "evaluation.html")
    assert open(copy).read() == "<p>run 1</p>" and not os.path.samefile(copy, source)
    assert os.listdir(tmp_path / "out") == ["evaluation.html"]


def test_each_run_has_its_own_report_folder_named_by_its_run_id():
    from reports import report_dir, run_report_dir

    assert report_dir("/o", "p") == "/o/reports/p"
    assert run_report_dir("/o", "p", "2026-11-30T18:51:48.123456-1a2b3c4d") == (
        "/o/reports/p/runs/2026-11-30T18:51:48.123456-1a2b3c4d")
    # An id that is no plain folder name stays one folder inside runs/, its own.
    assert [run_report_dir("/o", "p", i) for i in ("..", ".", "a/b", "%2E.", "(no run context)")] == [
        "/o/reports/p/runs/%2E.", "/o/reports/p/runs/%2E", "/o/reports/p/runs/a%2Fb", "/o/reports/p/runs/%252E.",
        "/o/reports/p/runs/%28no%20run%20context%29"]


def test_charts_are_byte_stable():
    def draw():
        return charts.to_svg(charts.slice_bars(["a", "b"], {"auc": [0.5, None]}, [3, 4],
                                               {"auc": [charts.Threshold("bound", 0.6)]}))
    assert draw() == draw()


# End to end: the reports the session's pipeline run wrote, in a real browser.

def _latest_evaluation_uri(config) -> str:
    from runners import summary

    run = summary.latest_run(summary.open_store(config), config)
    return run["Evaluator"].outputs["evaluation"][0].uri


def _open_offline(browser, path: str):
    """The page at `path` with every request but the page itself aborted; (page, requests tried, console errors)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    url = "file://" + path
    attempted, errors = [], []

    def route(r):
        if r.request.url == url:
            return r.continue_()
        attempted.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.on("request", lambda request: request.url != url and attempted.append(request.url))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="load")
    return page, attempted, errors


def _svg_sizes(page) -> list[tuple[float, float]]:
    return page.eval_on_selector_all("figure svg", "els => els.map(e => {const r = e.getBoundingClientRect(); "
                                     "return [r.width, r.height]})")


@pytest.mark.e2e
def test_reports_open_offline_in_chromium(small_pipeline):
    from playwright.sync_api import sync_playwright

    from reports import run_report_dir
    from reports.statistics import read_split_statistics
    from runners import summary

    assert small_pipeline.first_exit_code == 0
    config = small_pipeline.config()
    directory = os.path.join(config.output_root, "reports", config.pipeline_name)
    result = results.load_evaluation(_latest_evaluation_uri(config))
    # The newest run's own folder has the same pages as the pipeline's (its copies).
    newest = max(summary.open_store(config).get_contexts_by_type("pipeline_run"),
                 key=lambda c: (c.create_time_since_epoch, c.id))
    own = run_report_dir(config.output_root, config.pipeline_name, newest.name)
    assert sorted(os.listdir(own)) == ["evaluation.html", "statistics.html"]
    for name in os.listdir(own):
        assert open(os.path.join(own, name)).read() == open(os.path.join(directory, name)).read(), name
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page, attempted, errors = _open_offline(browser, os.path.join(directory, "evaluation.html"))
            assert attempted == [] and errors == []
            sizes = _svg_sizes(page)
            assert len(sizes) == 4 + len(config.evaluator.slices)  # ROC, PR, calibration, matrix; a chart per column
            assert all(w > 200 and h > 200 for w, h in sizes), sizes
            assert page.locator('#overall td[data-metric="auc"]').inner_text() == f"{result.overall.metrics['auc']:.4f}"
            assert page.locator("#decision").is_visible() and page.locator("#decision").inner_text() in (
                "BLESSED", "NOT blessed")
            hours = [t.removeprefix("trip_start_hour = ") for t in page.locator("#slices td:first-child").all_inner_texts()
                     if t.startswith("trip_start_hour")]
            assert hours == sorted(hours, key=int) and len(hours) > 10

            page, attempted, errors = _open_offline(browser, os.path.join(directory, "statistics.html"))
            assert attempted == [] and errors == []
            training = next(d for d in read_split_statistics(_statistics_uri(config)) if d.label == "training")
            features = page.locator("section.feature")
            assert features.count() == len(training.statistics.features)
            sizes = _svg_sizes(page)
            assert len(sizes) == features.count() and all(w > 200 and h > 100 for w, h in sizes), sizes
            assert page.locator("#datasets tr:nth-child(2) td:nth-child(2)").inner_text() == str(
                training.statistics.num_examples)
            assert page.locator("#anomalies").inner_text() == "No anomalies against the schema."
        finally:
            browser.close()


def _statistics_uri(config) -> str:
    from runners import summary

    run = summary.latest_run(summary.open_store(config), config)
    return run["StatisticsGen"].outputs["statistics"][0].uri
