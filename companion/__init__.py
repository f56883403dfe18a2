"""companion: the tested package behind the course's notebooks.

Read the modules in course order; each one names the notebook that teaches it.

    environment         devices, seeds and the environment check                (00_start_here)
    notebook            bootstrap cell, launch links, course map, block diagram (00_start_here)
    bpe                 training a byte-level BPE: incremental and plain        (01_tokenization)
    pretokenize         split regexes; special tokens kept out of user text     (01_tokenization)
    tokenizer           BPETokenizer, tiktoken parity, cl100k_base              (01_tokenization)
    tokenizer_files     the tokenizer file format and cl100k's file             (01_tokenization)
    char_tokenizer      characters as tokens: the simplest tokenizer            (01_tokenization)
    bpe_explorer        a widget stepping through BPE merges                    (01_tokenization)
    attention           scaled dot-product and multi-head attention             (02_attention)
    attention_explorer  heatmaps, a widget, contextual vectors                  (02_attention)
    model               the GPT: blocks, embeddings, parameter counts           (03_transformer)
    generation          sampling, top-k/top-p, generate and stream              (03, 07_inference)
    world               the small world of people, towns and facts              (04_pretraining)
    corpus              the course's own corpus, generated from the world       (04_pretraining)
    data                tokenised corpus, splits and batches                    (04_pretraining)
    train_config        the recipe of a training run and its history            (04_pretraining)
    pretraining         the training loop every later stage reuses              (04_pretraining)
    optimizer           AdamW with weight-decay groups, warm-up and cosine      (04_pretraining)
    checkpoints         safetensors checkpoints, written atomically             (04_pretraining)
    base_model          the shipped base model: its recipe, command and loader  (04_pretraining)
    distributed         data parallelism: ranks, process group, seeds (DDP)     (04_pretraining)
    compute             FLOPs per token, tokens per parameter, peak, MFU        (04_pretraining)
    scale               pretraining at a chosen size, alone or under torchrun   (04_pretraining)
    measurement         a reply scored (right, in format, declining), chs. 4-9  (04_pretraining)
    evaluation          fact completion and the majority baselines              (04_pretraining)
    chat                the chat template, the context window, chat()           (05_sft)
    questions           questions asked to the base and chat model, scored      (05_sft)
    sft_data            conversations about half of the world                   (05_sft)
    sft                 fine-tuning on conversations; the shipped chat model    (05_sft)
    preferences         prompts, sampled replies, the simulated rater           (06_rlhf)
    replies             prompt + reply tensors, reply-token log-probabilities   (06_rlhf)
    reward_model        Bradley-Terry and a reward model on the chat model      (06_rlhf)
    ppo                 GAE, the clipped objective, the KL leash, PPO           (06_rlhf)
    dpo                 the DPO loss and trainer                                (06_rlhf)
    constitution        principles, critiques, revisions, a rule-based judge    (06_rlhf)
    self_critique       the model as its own critic: SL-CAI and RL-CAI          (06_rlhf)
    effects             the effects of RLHF, measured                           (06_rlhf)
    rlhf                the pipeline; the shipped PPO, DPO and CAI models       (06_rlhf)
    kv_cache            keys and values kept between steps; the cached GPT      (07_inference)
    sampling_explorer   temperature, top-k, top-p as a widget and figures       (07_inference)
    hallucination       invented answers about held-out entities, measured      (07_inference)
    grpo                group advantages, the GRPO loss and trainer             (08_reasoning)
    reasoning           two-hop questions, chain of thought, votes, pass@k      (08_reasoning)
    llama_layers        RMSNorm, RoPE, SwiGLU: what changed since GPT-2         (09_real_model)
    llama               the Llama-style model: grouped-query attention, blocks  (09_real_model)
    quantization        GGUF's Q8_0 and Q4_1 blocks, dequantised by hand        (09_real_model)
    smollm2             SmolLM2-135M-Instruct from its GGUF file, load_smollm2  (09_real_model)
    exercises           checkers for the exercises of chapters 1-9              (09_real_model)

Words with one meaning throughout: *ids* are token ids (ints); *tokens* is a 1-D tensor of ids,
a stream such as a tokenised corpus; a token's *bytes* (a *piece*) are what it stands for, its
*text* (a *label*) what a plot shows. Shapes use B batch, T time, C channels, H heads, D head size,
V vocabulary.

Importing ``companion`` does nothing else: no I/O, no network, no seeding. Import the module you
need, e.g. ``from companion.model import GPT``.
"""

__version__ = "0.1.0"
