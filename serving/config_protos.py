"""TF Serving's BatchingParameters and MonitoringConfig messages, which the tensorflow-serving-api wheel does not
ship: what --batching_parameters_file and --monitoring_config_file hold, parsed as TF Serving parses them.

Field names, numbers and types copied from tensorflow/serving (master, unchanged in 2.16):
tensorflow_serving/servables/tensorflow/session_bundle_config.proto (message BatchingParameters, fields 1-7; later
releases append more) and tensorflow_serving/config/monitoring_config.proto (PrometheusConfig, MonitoringConfig).
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.errors import ServingError


def _messages():
    f = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    params = batching.message_type.add(name="BatchingParameters")
    for number, name, wrapper in ((1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                  (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                  (5, "thread_pool_name", "StringValue")):
        params.field.add(name=name, number=number, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
                         type_name=f".google.protobuf.{wrapper}")
    params.field.add(name="allowed_batch_sizes", number=6, label=f.LABEL_REPEATED, type=f.TYPE_INT64)
    params.field.add(name="pad_variable_length_inputs", number=7, label=f.LABEL_OPTIONAL, type=f.TYPE_BOOL)
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=f.LABEL_OPTIONAL, type=f.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=f.LABEL_OPTIONAL, type=f.TYPE_STRING)
    monitoring.message_type.add(name="MonitoringConfig").field.add(
        name="prometheus_config", number=1, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)

    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")))


BatchingParameters, MonitoringConfig = _messages()


def read_text_proto(path: str, message_class):
    """A text-format message from a file; errors worded as TF Serving's."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ServingError.invalid(f"{path}: {e.strerror}") from None
    try:
        return text_format.Parse(text, message_class())
    except (text_format.ParseError, UnicodeDecodeError) as e:
        raise ServingError.invalid(f"Error parsing text-format {message_class.DESCRIPTOR.full_name}: {e} "
                                   f"(in {path})") from None
