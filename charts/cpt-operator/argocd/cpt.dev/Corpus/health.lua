-- Argo CD health of a cpt.dev/v1alpha1 Corpus: Progressing until curated (or while the operator
-- has not observed the newest spec), Healthy when Ready, Degraded when curation failed.
-- Uses no Lua library (Argo CD runs health checks without them by default).
local hs = {}

local function int(x)
  return tostring(x - x % 1)
end

local function condition_message(status)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.status ~= "True" and c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
    for _, c in ipairs(status.conditions) do
      if c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
  end
  return nil
end

local status = obj.status
local generation = obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the corpus"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. int(generation)
  return hs
end

local phase = status.phase
if phase == "Ready" then
  hs.status = "Healthy"
  local parts = {}
  if status.documents ~= nil then
    table.insert(parts, int(status.documents) .. " documents")
  end
  if status.tokens ~= nil then
    table.insert(parts, int(status.tokens) .. " tokens")
  end
  if status.shards ~= nil then
    table.insert(parts, int(status.shards) .. " shards")
  end
  if #parts > 0 then
    hs.message = "Ready: " .. table.concat(parts, ", ")
  else
    hs.message = "Ready"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local detail = condition_message(status)
  if detail ~= nil then
    hs.message = "Curation failed: " .. detail
  else
    hs.message = "Curation failed"
  end
elseif phase == "Curating" then
  hs.status = "Progressing"
  if status.jobName ~= nil then
    hs.message = "Curating (Job " .. status.jobName .. ")"
  else
    hs.message = "Curating"
  end
elseif phase == nil or phase == "Pending" then
  hs.status = "Progressing"
  local detail = condition_message(status)
  if detail ~= nil then
    hs.message = "Pending: " .. detail
  else
    hs.message = "Pending"
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
