"""Run-time adaptation controller for complex event forecasting."""
