"""Ray-side entry points: the pretraining job driver Ray runs (`launch.pretrain_job`, locally or
as a submitted job) and the Jobs API submission helper (`launch.submit`). Thin: config in,
library call."""
