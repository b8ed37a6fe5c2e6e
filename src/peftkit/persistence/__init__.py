"""The persistence floor, above the methods and below `PeftModel`: adapter state dicts
(`state_dict`, `prompt_state_dict`), adapter folders and the Hub (`saving`, `reading`, `folders`,
`prompt_loading`),
sharded (FSDP/DTensor) state dicts (`distributed`) and transformers' weight renaming
(`weight_conversion`)."""
