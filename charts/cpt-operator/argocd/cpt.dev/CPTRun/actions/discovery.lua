-- Argo CD actions of a CPTRun. halt sets spec.suspend: true (the operator suspends the job, frees
-- the GPUs and keeps every checkpoint); resume sets it back to false (training restarts from the
-- newest complete checkpoint). A finished run offers neither; a run the forgetting monitor halted
-- is resumed by changing its spec (threshold, mixing) in Git, not by a button. No Lua library.
local actions = {}
actions["halt"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-pause-circle", ["displayName"] = "Halt run"}
actions["resume"] = {["disabled"] = true, ["iconClass"] = "fa fa-fw fa-play-circle", ["displayName"] = "Resume run"}

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end
local suspended = obj.spec ~= nil and obj.spec.suspend == true
local finished = phase == "Succeeded" or phase == "Failed"

if not finished then
  if suspended then
    actions["resume"]["disabled"] = false
  elseif phase ~= "Halted" then
    actions["halt"]["disabled"] = false
  end
end
return actions
