"""TFDV statistics, streamed: examples go in bounded batches (Arrow RecordBatches decoded by tfx_bsl) into the
accumulators of TFDV's own in-memory statistics generators, so memory does not grow with the number of requests
(the generators keep sketches: quantiles, top-k, counts)."""
import dataclasses

import pyarrow as pa

SCORE_FEATURE = "score"  # the model's output, summarized as one numeric feature
QUANTILE_BUCKETS = 20  # a window's quantiles histogram: its CDF at 5 % steps (extracting 100 cost 0.6 s a window)


class StreamingStatistics:
    """add(record_batch)* then result(): TFDV's statistics of everything added."""

    def __init__(self, options):
        from tensorflow_data_validation.statistics import stats_impl

        self._generators = stats_impl.get_generators(options, in_memory=True)
        self._accumulators = [g.create_accumulator() for g in self._generators]
        self.examples = 0

    def add(self, record_batch: pa.RecordBatch) -> None:
        self._accumulators = [g.add_input(a, record_batch) for g, a in zip(self._generators, self._accumulators, strict=True)]
        self.examples += record_batch.num_rows

    def merged_with(self, others: list["StreamingStatistics"]) -> "StreamingStatistics":
        """A new accumulator holding this one's data and the others' (the generators' merge_accumulators); call it
        after result() on each of them: merging may reuse their accumulators."""
        merged = StreamingStatistics.__new__(StreamingStatistics)
        merged._generators = self._generators
        merged._accumulators = [g.merge_accumulators([a, *(o._accumulators[i] for o in others)])
                                for i, (g, a) in enumerate(zip(self._generators, self._accumulators, strict=True))]
        merged.examples = self.examples + sum(o.examples for o in others)
        return merged

    def result(self):
        """A DatasetFeatureStatisticsList with one dataset."""
        from tensorflow_data_validation.statistics import stats_impl

        return stats_impl.extract_statistics_output(self._accumulators, self._generators)


@dataclasses.dataclass
class Slot:
    """One (window, version): its features' and its scores' statistics, and the batch being filled."""
    features: StreamingStatistics
    scores: StreamingStatistics
    requests: int = 0
    undecodable: int = 0          # examples that do not parse as tf.Examples of the schema's types
    pending: list = dataclasses.field(default_factory=list)
    pending_scores: list = dataclasses.field(default_factory=list)
    first: float = float("inf")
    last: float = float("-inf")


class WindowedStatistics:
    """Requests in, statistics per (window start, model version) out; at most batch_size examples wait per slot."""

    def __init__(self, schema, window_seconds: int, batch_size: int):
        import tensorflow_data_validation as tfdv
        from tfx_bsl.coders import example_coder

        self._schema = schema
        # Fine quantiles: the comparisons rebucket a window onto the reference's deciles from them
        # (monitoring/compare.py aligned); the STANDARD histograms (10 buckets, as StatisticsGen's) are the charts'.
        self._feature_options = tfdv.StatsOptions(schema=schema, num_quantiles_histogram_buckets=QUANTILE_BUCKETS)
        self._score_options = tfdv.StatsOptions()
        # Features the schema keeps out of SERVING (the label's source) are left out of the decoded batches: a
        # column of them, even empty, would read as present there.
        decoded = type(schema)()
        decoded.CopyFrom(schema)
        del decoded.feature[:]
        decoded.feature.extend(f for f in schema.feature if "SERVING" not in f.not_in_environment)
        self._decoder = example_coder.ExamplesToRecordBatchDecoder(decoded.SerializeToString())
        self.window_seconds = window_seconds
        self.batch_size = batch_size
        self.slots: dict[tuple[int, int], Slot] = {}

    def add(self, request) -> None:
        start = int(request.time // self.window_seconds * self.window_seconds)
        slot = self.slots.get((start, request.version))
        if slot is None:
            slot = self.slots[(start, request.version)] = Slot(StreamingStatistics(self._feature_options),
                                                               StreamingStatistics(self._score_options))
        slot.requests += 1
        slot.first, slot.last = min(slot.first, request.time), max(slot.last, request.time)
        slot.pending.extend(request.examples)
        slot.pending_scores.extend(request.scores)
        if len(slot.pending) >= self.batch_size:
            self._flush(slot)

    def finish(self) -> None:
        for slot in self.slots.values():
            self._flush(slot)

    def _decode(self, slot: Slot, examples: list[bytes]) -> pa.RecordBatch | None:
        try:
            return self._decoder.DecodeBatch(examples)
        except Exception:  # one bad example fails the batch: decode one by one, counting the bad ones
            good = []
            for example in examples:
                try:
                    self._decoder.DecodeBatch([example])
                    good.append(example)
                except Exception:
                    slot.undecodable += 1
            return self._decoder.DecodeBatch(good) if good else None

    def _flush(self, slot: Slot) -> None:
        if slot.pending:
            batch = self._decode(slot, slot.pending)
            if batch is not None:
                slot.features.add(batch)
            slot.pending = []
        if slot.pending_scores:
            scores = pa.array([[s] for s in slot.pending_scores], type=pa.large_list(pa.float32()))
            slot.scores.add(pa.RecordBatch.from_arrays([scores], [SCORE_FEATURE]))
            slot.pending_scores = []
