# Runtime defaults: hooks, environment, seeding and logging.
default_scope = 'davit'

default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3),
    logger=dict(type='LoggerHook', interval=100),
)

env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))

randomness = dict(seed=None, deterministic=False)

load_from = None
resume = False
log_level = 'INFO'
work_dir = None
