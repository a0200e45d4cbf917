"""The teacher's infrastructure: `cache` (teachers fine-tuned once per teacher x data x recipe,
under a file lock), `outputs` (teacher outputs computed once and read back per batch,
`teacher.outputs=cached`) and `shared` (one fine-tune for a run on several processes)."""
