"""Training: the argument groups, the one ``fit`` loop shared by pretrain and every finetune method, checkpoints."""
