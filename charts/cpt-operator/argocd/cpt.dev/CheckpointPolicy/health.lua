-- Argo CD health of a cpt.dev/v1alpha1 CheckpointPolicy (it has no phase). A policy is passive
-- data the API server has validated: Healthy without a status (the operator need not write one,
-- and waiting for it would block a sync wave forever). Once a status exists: Progressing while it
-- lags the spec, Degraded while its Ready condition is False. Uses no Lua library.
local hs = {}

local function int(x)
  return tostring(x - x % 1)
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Healthy"
  hs.message = "Accepted; checked when a run uses it"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. int(generation)
  return hs
end

local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  else
    hs.message = "Not ready: " .. tostring(ready.reason)
  end
  return hs
end
if ready ~= nil and ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Being validated"
  return hs
end
hs.status = "Healthy"
if status.runs ~= nil then
  hs.message = "Used by " .. int(status.runs) .. " run(s)"
else
  hs.message = "Ready"
end
return hs
