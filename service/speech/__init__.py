"""Speech models: HuBERT + quantizer, pitch and style tokenizers, HiFi-GAN unit vocoders."""
