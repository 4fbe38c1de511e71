-- Halt a CPTRun from Argo CD: suspend it (the operator suspends the PyTorchJob, frees the GPUs
-- and keeps every checkpoint). With auto-sync, Git must agree (docs/argocd.md). No Lua library.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["cpt.dev/suspended-by"] = "argocd-action"
return obj
