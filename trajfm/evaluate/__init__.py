"""Evaluation: forecasting (ADE/FDE in metres) against baselines."""

from trajfm.evaluate.forecast import constant_velocity, evaluate_forecast, forecast_points, rollout

__all__ = ["constant_velocity", "evaluate_forecast", "forecast_points", "rollout"]
