"""Ingestion: raw interaction logs -> validated, point-in-time, time-split tf.Examples."""
