"""MLflow: the run of a training run or search (`run`), rank 0's record (`record`), generators as
models and the Model Registry (`registry`), pulling them back (`hub`), and the tracking server
(`server`). Nothing here imports Ray."""
