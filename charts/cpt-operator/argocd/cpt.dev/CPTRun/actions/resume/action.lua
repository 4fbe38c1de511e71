-- Resume a suspended CPTRun from Argo CD: the operator restarts training from the
-- newest complete checkpoint. No Lua library.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["cpt.dev/suspended-by"] = nil
end
return obj
