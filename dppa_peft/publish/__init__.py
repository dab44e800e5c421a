"""Publishing: model cards, Hub push, stock-PEFT export."""
