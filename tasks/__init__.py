"""Thin Prefect tasks over ``emotion_core``: retries, logging and artifacts live here, logic does not."""
