# Runtime defaults: hooks, environment, seeding and logging.
default_scope = 'davit'

default_hooks = dict(
    # latest.pth (resumable) and best.pth (weights + model card) only; max_keep_ckpts=N (not 0) also keeps
    # the newest N epoch_N.pth full states (-1: all), each as large as latest.pth
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=0, save_best='auto'),
    logger=dict(type='LoggerHook', interval=100),
)

env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))

randomness = dict(seed=None, deterministic=False)

load_from = None
resume = False
log_level = 'INFO'
work_dir = None
