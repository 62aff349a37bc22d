"""Training and evaluating the shared space (`retriever train`, `retriever eval`).

One optimizer step, and where each part lives:

    pairs.py        captioned images from folders, tables, COCO      -> list[Pair]
    datasets.py     epochs of pairs in memory or streamed shards     -> StepBatch (pixels, tokens)
    step.py         Stepper.step: micro-batches (grad accumulation), autocast precision,
                    DDP gradient sync                                -> StepResult
      losses.py       infonce or distance over the global batch (distributed.gather_with_grad)
      optimizer.py    AdamW; lr_at: warmup then cosine
    config.py       TrainConfig and its checks, EpochStats, TrainResult, the run's files
    loop.py         TrainConfig -> epochs of steps -> validation (evaluation.py), curves.py,
                    resumable state (resume.py), the checkpoint (encoding/checkpoints.py)
    distributed.py  process groups (gloo/NCCL), --nproc launch
    synthetic.py    generated captioned scenes (tests, `retriever demo`)
"""
