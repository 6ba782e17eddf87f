"""Measuring the feedback and the policy: integrity, the trust gate, alarms, evaluation, red teaming, reports.
No Ray; imports only the wings below it (config, data, models, rl, feedback)."""
