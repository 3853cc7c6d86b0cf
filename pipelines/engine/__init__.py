"""The parts of a conversation, each owning its state, around one session state machine.

    core.EngineCore         loop, tasks, events and the agent state (states.AgentStateMachine)
    caller_audio.CallerAudio    inbox frames → per-consumer formats: ring buffer, VAD, STT
    turn_taking.TurnTaking      VAD edges → end of turn → committed user turns (DTMF too)
    preemption.Preemption       answers started at a pause, released or dropped at turn end
    barge_in.BargeIn            one interruption episode at a time: hold, commit or resume
    speech_driver.SpeechDriver  the agent's speeches: queue, playback, stop, what was heard
    liveness.Liveness           idle prompts and hangup, the response watchdog, max duration
    failures.ProviderFailures   answers lost to providers: apologise, or end the call
    ending.Ending               hangup and teardown

`pipelines.conversation.Conversation` wires them and is the public face.
"""
