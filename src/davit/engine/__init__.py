"""The workflows behind ``davit test`` / ``tools/test.py`` (:mod:`.evaluate`), ``davit train`` /
``tools/train.py`` (:mod:`.train`, which builds a :class:`~.state.TrainState` and runs
:class:`~.trainer.Trainer`) and ``davit predict`` (:mod:`.infer`, writing through
:mod:`.results`), with the pieces they share: evaluation primitives (:mod:`.predict`), reports
(:mod:`.reports`), the training-checkpoint layout (:mod:`.train_checkpoint`) and multi-process
helpers (:mod:`.distributed`)."""
