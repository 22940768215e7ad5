"""What modules/ (the exported model), pipeline/ (the DAG) and serving/ (the model server, its clients) agree on.

Constants only: no TensorFlow or TFX import, so any of the three (and a client) can import it cheaply.
Change a value here and every side changes with it.
"""

# The exported SavedModel's signatures (modules/model.py exports them; TFMA and TF Serving clients call them).
SERVING_SIGNATURE = "serving_default"        # serialized tf.Example -> OUTPUT_KEY
RAW_SIGNATURE = "serving_raw"                # one tensor per raw feature (JSON clients) -> OUTPUT_KEY
TRANSFORM_SIGNATURE = "transform_features"   # serialized tf.Example -> the transformed features (TFMA's preprocessing)
EXAMPLES_INPUT = "examples"                  # the serialized tf.Example input of SERVING_SIGNATURE, TRANSFORM_SIGNATURE
OUTPUT_KEY = "probabilities"                 # P(big tipper), shape [batch, 1]

# Requests TF Serving (and serving/) replay before a version serves: PredictionLog records, in the version directory.
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"

# The label the model learns ("big tipper": tips > 20% of the fare), made by preprocessing_fn from the raw tips.
LABEL_KEY = "big_tipper"
TIPS_KEY = "tips"
# Raw features a serving request leaves out (what the label is derived from is not known at prediction time).
SERVING_DROPPED_KEYS = (TIPS_KEY,)

# In the Trainer's model_run directory (run_fn writes it, the run summary reads it): warm or cold, and the steps;
# ML Metadata records the Trainer's base_model input but not what run_fn did with it.
TRAINING_RECORD = "training.json"

# custom_config keys: pipeline/components.py passes every one, from pipeline/config.yaml; modules/ requires them
# (no fallback values there, so the configuration is the only source of these settings).
MODULE_FINGERPRINT_KEY = "module_fingerprint"  # Transform, Tuner, Trainer: a change to modules/ invalidates the cache
BATCH_SIZE_KEY = "batch_size"                  # Tuner, Trainer: trainer.batch_size
MAX_TRIALS_KEY = "max_trials"                  # Tuner: tuner.max_trials
SEED_KEY = "seed"                              # Tuner: tuner.seed (which trials the random search tries)
EPOCHS_KEY = "epochs"                          # Trainer: trainer.epochs (0: TFX's train_args steps, fixed)
MAX_TRAIN_STEPS_KEY = "max_train_steps"        # Trainer: trainer.max_train_steps, the cap on epoch-based steps
WARM_START_STEPS_KEY = "warm_start_steps"      # Trainer: continuous.warm_start_steps, the steps from a base_model
# Tuner, Trainer: 1 when their examples are ExampleGen's raw ones (a rolling window: Transform writes no transformed
# copy of the window), so the input pipeline applies the transform graph itself; 0 for Transform's output.
RAW_EXAMPLES_KEY = "raw_examples"
# What tuner_fn and run_fn read (each required); the fingerprint goes beside them, read by TFX's cache only.
TUNER_CONFIG_KEYS = (MAX_TRIALS_KEY, SEED_KEY, BATCH_SIZE_KEY, RAW_EXAMPLES_KEY)
TRAINER_CONFIG_KEYS = (BATCH_SIZE_KEY, EPOCHS_KEY, MAX_TRAIN_STEPS_KEY, WARM_START_STEPS_KEY, RAW_EXAMPLES_KEY)
