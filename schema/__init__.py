"""The data's schema: schema.pbtxt (ImportSchemaGen reads it, ExampleValidator checks every run against it) and
tool.py, which re-infers it from the data and applies the curation kept there (`make schema`)."""
