"""
The machinery that model.py, train.py and sample.py call, one concern per module:

    averaging   an exponential moving average of the weights, kept as the model
    budget      the step count and when to evaluate, a time budget's, and the model sized for it
    cli         flags made from a script's constants, and the one way a script refuses bad input
    data        text of any size as cached tokens, the split, the loader, the evaluation's windows
    explain     what `sample.py --explain` prints and draws
    huggingface a model as a Hugging Face GPT-2 directory
    logbook     log/log.txt and the loss plot
    optimizer   AdamW with weight-decay groups, and Muon
    processes   signals, and the processes that torchrun starts
    speed       device, dtype, threads, torch.compile, dropout's masks, the chunked loss
    tokenizer   GPT-2's tokenizer (offline) and a byte-level BPE trained on your text
"""
