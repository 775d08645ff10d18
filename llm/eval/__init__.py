"""Evaluation: tasks as YAML files, scored the way lm-evaluation-harness scores them.

Entry points: ``runner.evaluate_tasks`` (run tasks on a model; item shards with ``items=``),
``runner.merge`` (combine shard results), ``report.leaderboard_markdown`` (a table across
models), ``lm.load_eval_model`` (an llmforge checkpoint or a Hugging Face folder),
``judge`` (auxiliary-model judges) and ``lm_eval_adapter`` (the ``llmforge`` model type for
lm_eval). Built-in task files are in ``tasks/``.
"""
